"""The reconciler: Firestore's job documents are the truth and Pub/Sub only the transport, so jobs whose message
may be gone are published again. Three cases: a job created but never published (the function died in between),
a running job whose lease expired (its runner died), a job queued for long (the emulator, for one, loses every
message on restart). Re-publishing is always safe: claiming decides who works, duplicates are acked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from gpu_runner.events import EventPublisher
from gpu_runner.leasing import lease_expired
from schemas import names
from schemas._base import utcnow
from schemas.jobs import JobDoc, JobRequested, JobStatus

log = structlog.get_logger(__name__)

SCAN_LIMIT = 500


@dataclass(frozen=True)
class ReconcilePolicy:
    unpublished_after: timedelta
    requeue_queued_after: timedelta


def needs_publish(job: JobDoc, now: datetime, policy: ReconcilePolicy) -> str | None:
    """Why the job's message should be published again, or None. Pure."""
    if job.status == JobStatus.QUEUED:
        if job.published_at is None:
            return "never_published" if now - job.created_at >= policy.unpublished_after else None
        return "stuck_queued" if now - job.published_at >= policy.requeue_queued_after else None
    if job.status == JobStatus.RUNNING and lease_expired(job, now):
        return "lease_expired"
    return None


class Reconciler:
    def __init__(self, db: firestore.Client, events: EventPublisher, policy: ReconcilePolicy):
        self._db = db
        self._events = events
        self._policy = policy

    def run_once(self) -> list[str]:
        now = utcnow()
        republished = []
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            query = self._db.collection(names.JOBS).where(filter=FieldFilter("status", "==", status.value))
            for snap in query.limit(SCAN_LIMIT).stream():
                try:
                    job = JobDoc.model_validate(snap.to_dict())
                except ValueError:
                    continue
                reason = needs_publish(job, now, self._policy)
                if reason is None:
                    continue
                if self._republish(snap, job, reason):
                    republished.append(job.job_id)
        return republished

    def _republish(self, snap, job: JobDoc, reason: str) -> bool:
        now = utcnow()
        update = {"published_at": now, "updated_at": now}
        if reason == "lease_expired":
            update.update({"status": JobStatus.QUEUED.value, "stage": "requeued", "lease_owner": None})
        try:
            # Conditional on the snapshot: if the job moved meanwhile, it is someone else's to handle.
            snap.reference.update(update, option=self._db.write_option(last_update_time=snap.update_time))
        except Exception:  # noqa: BLE001 - lost race or transient error: the next pass decides again
            return False
        message = JobRequested(job_id=job.job_id, type=job.type)
        self._events.republish_job(message.model_dump_json().encode(), job.job_id, str(job.type))
        log.info("job_republished", job_id=job.job_id, reason=reason)
        return True
