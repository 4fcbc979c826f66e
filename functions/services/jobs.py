"""Creating a job exactly once, for images and animations alike, and recording who waits on it.

A job's id is named from the work it does (plus "-rN" for the Nth retry), so every caller asking for the same
work computes the same id. Firestore's create() then admits exactly one creator and answers the others with an
immediate Conflict; a read-then-write transaction would livelock under contention on the emulator. The winner
publishes the job; the others join it: their tenant (and end user) is recorded in interest documents of their own
(`jobs/{id}/interest/*`, functions/adapters/firestore/interest.py), never on the job document, which the runner
writes while it works; a cancel withdraws only that tenant's interest (functions/services/tasks.py).

A failed or canceled job is followed by the next retry's id. A `job_heads/{first id}` document remembers which
retry is current and which retries failed: only failures use up the retry budget (work that always fails cannot
be asked for forever), a cancel never does, so canceling can never leave a cue blocked for anybody."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from functions.adapters.firestore.interest import InterestRecord
from functions.adapters.firestore.jobs import JobStore
from functions.adapters.pubsub import Publisher
from functions.core.errors import Unavailable
from functions.core.tenants import scoped_user
from functions.services.quotas import Admission
from schemas._base import utcnow
from schemas.jobs import JobDoc, JobStatus

log = structlog.get_logger(__name__)

MAX_JOB_RETRIES = 3  # retries after failures; a cancel costs none
CANCEL_PENDING_S = 30.0  # how long a cancel's "nobody else waits?" intent keeps joiners off a job
_SCAN_LIMIT = 32  # dead retries one request may step over (the head normally points at the live one)

# `admit()` is called right before this request would create a job: it raises when a quota is used up, and
# returns the admission (functions/services/quotas.py): its `refund()` to call when another creator won the race
# (nothing was created after all), and the GPU-seconds it reserved, recorded on the job.
Admit = Callable[[], Admission]


@dataclass(frozen=True)
class Interest:
    """Who is asking: a tenant, and (when known) its end user."""

    tenant: str
    user_id: str | None = None

    def fields(self) -> dict:
        """The interest records of a job this request creates."""
        return {
            "tenant": self.tenant,
            "tenants": [self.tenant],
            "requesters": {self.tenant: [self.user_id]} if self.user_id else {},
            "requester_keys": [scoped_user(self.tenant, self.user_id)] if self.user_id else [],
        }

    def recorded_on(self, job: JobDoc) -> bool:
        """Recorded on the job document itself: the creator's interest (and that of jobs from before issue 17)."""
        if self.tenant not in job.tenants:
            return False
        return self.user_id is None or self.user_id in job.requesters.get(self.tenant, [])

    def record(self) -> InterestRecord:
        user_key = scoped_user(self.tenant, self.user_id) if self.user_id else None
        return InterestRecord(self.tenant, self.user_id, user_key)


def ensure_job(
    store: JobStore, publisher: Publisher, build: Callable[[int], JobDoc], interest: Interest,
    admit: Admit | None = None, on_created: Callable[[JobDoc], None] | None = None,
) -> JobDoc:
    """`build(retry)` makes the job document for that retry number; returns the job that does the work (or, once
    the failure budget is spent, the last failed one)."""
    base = build(0).job_id
    retry, failed = store.head(base)
    for _ in range(_SCAN_LIMIT):
        job = build(retry).model_copy(update=interest.fields())
        existing = store.job(job.job_id)
        if existing is None:
            with store.creation_lock(job.job_id):  # this instance's other askers wait, then find the job
                existing = store.job(job.job_id)
                if existing is None:
                    admission = admit() if admit else None
                    if admission is not None and admission.gpu_reservation is not None:
                        job = job.model_copy(update={"gpu_reservation": admission.gpu_reservation})
                    if store.create(job, interest.record()):
                        if on_created is not None:
                            on_created(job)  # e.g. the prompt index entry: written by the creator, once
                        _publish(store, publisher, job)
                        return job
                    if admission is not None:
                        admission.refund()
                    continue  # another instance created this id a moment ago: look at its job
        if _live(existing):
            joined = _join(store, existing, interest)
            if joined is not None:
                return joined
            continue  # it changed under us (canceled?): decide again
        if existing.status == JobStatus.FAILED:
            failed.add(retry)
            if len(failed) > MAX_JOB_RETRIES:
                store.advance_head(base, retry, failed_retry=retry)
                return existing
            store.advance_head(base, retry + 1, failed_retry=retry)
        else:  # canceled, or canceled while running: never blocks, never counts
            store.advance_head(base, retry + 1)
        retry += 1
    raise Unavailable("the jobs of this request keep being canceled; retry")


def cancel_pending(job: JobDoc, now: datetime, within_s: float = CANCEL_PENDING_S) -> bool:
    """Whether a cancel is deciding whether anyone else waits on `job` (its intent is younger than `within_s`)."""
    return job.cancel_pending_at is not None and (now - job.cancel_pending_at).total_seconds() < within_s


def _live(job: JobDoc) -> bool:
    """A job a request may wait on: it is done, or still going and nobody stopped it (or is about to)."""
    if job.status == JobStatus.SUCCEEDED:
        return True
    return (job.status in (JobStatus.QUEUED, JobStatus.RUNNING) and not job.cancel_requested
            and not cancel_pending(job, utcnow()))


def _join(store: JobStore, job: JobDoc, interest: Interest) -> JobDoc | None:
    """Record this tenant's interest in `job`, unless the job stopped being live meanwhile (then None).

    The records are documents of their own, created once: a joiner never writes the job document, so it never
    contends with the runner's conditional writes, and a user asking again writes nothing. The read of the job
    after recording closes the race with a cancel, which writes its intent on the job before it looks for other
    tenants' records: either this read sees the intent (or the cancel) and this request moves on to a fresh job,
    or the cancel's look finds this tenant's marker and lets the job go on."""
    if interest.recorded_on(job) or (not job.tenants and job.tenant is None):
        return job  # already waiting (the creator), or a job from before tenancy (kept as it is)
    marker, mine, withdrawn = store.interest.recorded(job.job_id, interest.record())
    if mine:
        return job  # a user asking again: two reads, no write
    store.interest.record(job, interest.record(), utcnow(), marker=marker, revive=withdrawn)
    current = store.job(job.job_id)
    return current if current is not None and _live(current) else None


def _publish(store: JobStore, publisher: Publisher, job: JobDoc) -> None:
    try:
        publisher.publish_job(job)
    except Exception:  # noqa: BLE001 - the job document is the truth; the runner's reconciler re-publishes it
        log.warning("publish_failed_job_left_for_reconciler", job_id=job.job_id, exc_info=True)
        return
    store.mark_published(job.job_id, utcnow())
