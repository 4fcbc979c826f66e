"""Creating a job exactly once, for images and animations alike.

A job's id is named from the work it does (plus "-rN" for the Nth retry), so every caller asking for the same
work computes the same id. Firestore's create() then admits exactly one creator and answers the others with an
immediate Conflict; a read-then-write transaction would livelock under contention on the emulator. The winner
publishes the job; the losers join it. A failed or canceled job is retried under the next id, a bounded number
of times, so work that always fails cannot be asked for forever."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from functions.publish import Publisher
from functions.store import Store
from schemas._base import utcnow
from schemas.jobs import JobDoc, JobStatus

log = structlog.get_logger(__name__)

MAX_JOB_RETRIES = 3


def ensure_job(store: Store, publisher: Publisher, build: Callable[[int], JobDoc]) -> JobDoc:
    """`build(retry)` makes the job document for that retry number; returns the job that does the work."""
    existing: JobDoc | None = None
    for retry in range(MAX_JOB_RETRIES + 1):
        job = build(retry)
        if store.create_job(job):
            _publish(store, publisher, job)
            return job
        existing = store.job(job.job_id)
        if existing is not None and existing.status not in (JobStatus.FAILED, JobStatus.CANCELED):
            return existing
    assert existing is not None
    return existing


def _publish(store: Store, publisher: Publisher, job: JobDoc) -> None:
    try:
        publisher.publish_job(job)
    except Exception:  # noqa: BLE001 - the job document is the truth; the runner's reconciler re-publishes it
        log.warning("publish_failed_job_left_for_reconciler", job_id=job.job_id, exc_info=True)
        return
    store.mark_published(job.job_id, utcnow())
