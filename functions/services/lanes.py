"""Job lanes, producer side: promotion (which topic each lane's jobs go to is soul_common/delivery.py's). HTTP and ingest requests are
interactive (a user waits); pre-renders and bulk requests that ask for it (`"lane": "background"`) go to the
background topic, which runners take only when no interactive work waits.

Dedup joins requesters to one job, so a user may come to wait on a job that was queued as background work (a
pre-render nobody had asked for yet): the job is then promoted — its lane becomes interactive and it is
published on the interactive topic too. The runner claims a job once (the job document decides), so the copy
left on the background topic is dropped when it comes up."""

from __future__ import annotations

import structlog

from functions.adapters.firestore.jobs import JobStore
from functions.adapters.pubsub import Publisher
from schemas._base import utcnow
from schemas.jobs import JobDoc, JobLane, JobStatus

log = structlog.get_logger(__name__)


def promote_if_waited_on(store: JobStore, publisher: Publisher, job: JobDoc, asked: JobLane | str) -> JobDoc:
    """An interactive asker joining a queued background job moves it to the interactive lane."""
    if JobLane(asked) is not JobLane.INTERACTIVE or JobLane(job.lane) is not JobLane.BACKGROUND:
        return job
    if JobStatus(job.status) is not JobStatus.QUEUED:
        return job
    promoted = job.model_copy(update={"lane": JobLane.INTERACTIVE.value, "updated_at": utcnow()})
    store.update(job.job_id, {"lane": JobLane.INTERACTIVE.value, "updated_at": promoted.updated_at})
    try:
        publisher.publish_job(promoted)
    except Exception:  # noqa: BLE001 - the background copy still delivers it; promotion only makes it sooner
        log.warning("promote_publish_failed", job_id=job.job_id, exc_info=True)
    log.info("job_promoted", job_id=job.job_id)
    return promoted
