"""The reconciler: Firestore's job documents are the truth and Pub/Sub only the transport, so every job that is
not finished is brought to an end. It runs in every runner (a loop) and in the `reconcile` function that Cloud
Scheduler calls every minute, so jobs are reconciled even while the fleet is scaled to zero.

The rules (`decide`, pure) for a non-terminal job:
- queued, never published, older than `unpublished_after`: publish (the creator died between create and publish);
- queued, published, and no message can still be live: publish again. A message that a runner has taken since
  the last publish (the job was touched after it: `updated_at > published_at`, a claim then a release) is live
  until the subscription gives up on it: `redelivery_window` (ack deadline x max delivery attempts + the
  backoffs between them) after that touch. A message no runner has taken yet waits in the backlog, live until
  retention: it is only presumed lost after `undelivered_after` (1 h), so a backlog that merely waits for
  runners is never duplicated (which would inflate the very backlog the autoscaler reads);
- running with an expired lease (its runner died or froze): re-queue it and publish at once. The lease outlives
  the runner's ack-deadline extension, so by then the dead runner's message has been redelivered or dropped;
- running with an expired lease after `max_attempts` claims (it kills every runner that takes it), or re-published
  `max_republishes` times without ending (its messages never lead to a claim): fail it with the reason;
- a non-terminal document that no longer validates: fail it (it can never run, it must not stay queued);
- a finished job whose completion event was never published (its runner died between the two, and its message
  is gone too) after the same window: publish the event (consumers dedup on the CloudEvent id = job id).
Every change is a write conditional on the document's update time, so concurrent reconcilers and runners never
both act on one observation; a publish that fails is undone (published_at cleared) so the next pass retries it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Protocol

import structlog
from pydantic import ValidationError

from schemas import names
from schemas._base import firestore_dict, utcnow
from schemas.jobs import TERMINAL_STATUSES, JobDoc, JobError, JobLane, JobStatus, JobType
from soul_common import firestore as fs
from soul_common.delivery import LANES, policy

log = structlog.get_logger(__name__)

SCAN_LIMIT = 500


def redelivery_window() -> timedelta:
    """The longest a delivered, unacked job message can stay on a lane's subscription before it is
    dead-lettered, from the deployed delivery policy (soul_common/delivery.py): the longest over the lanes."""
    return max(policy(lane.subscription).redelivery_window() for lane in LANES)


class Action(Enum):
    PUBLISH = "publish"  # queued: publish its message (again)
    REQUEUE = "requeue"  # running, lease expired: back to queued, then publish
    FAIL = "fail"  # give up, with the reason


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


@dataclass(frozen=True)
class ReconcilePolicy:
    unpublished_after: timedelta
    # How long after its last publish (and last runner touch) a queued job's message may still be live.
    requeue_queued_after: timedelta = field(default_factory=redelivery_window)
    # How long a message no runner has taken yet may wait in the backlog before it is presumed lost.
    undelivered_after: timedelta = timedelta(hours=1)
    max_attempts: int = 5
    max_republishes: int = 10


def decide(job: JobDoc, now: datetime, policy: ReconcilePolicy) -> Decision | None:
    """What the reconciler does with this job now, or None. Pure."""
    if job.status == JobStatus.QUEUED:
        if job.published_at is None:
            if now - job.created_at < policy.unpublished_after:
                return None
            return _bounded(job, policy, Decision(Action.PUBLISH, "never_published"))
        if job.updated_at > job.published_at:  # a runner took its message since: redelivery is bounded
            lost = now - job.updated_at >= policy.requeue_queued_after
        else:  # never taken since the last publish: it may just be waiting in the backlog
            lost = now - job.published_at >= policy.undelivered_after
        return _bounded(job, policy, Decision(Action.PUBLISH, "stuck_queued")) if lost else None
    if job.status == JobStatus.RUNNING and (job.lease_expires_at is None or job.lease_expires_at <= now):
        if job.attempts >= policy.max_attempts:
            return Decision(Action.FAIL, f"attempts_exhausted: {job.attempts} runners lost this job")
        return _bounded(job, policy, Decision(Action.REQUEUE, "lease_expired"))
    return None


def needs_publish(job: JobDoc, now: datetime, policy: ReconcilePolicy) -> str | None:
    """Why the job's message should be published again, or None (the reasons of `decide`, without failures)."""
    decision = decide(job, now, policy)
    return decision.reason if decision is not None and decision.action is not Action.FAIL else None


def needs_announce(job: JobDoc, now: datetime, policy: ReconcilePolicy) -> bool:
    """A finished job with no completion event, past the window in which its own message would still bring it."""
    finished = job.finished_at or job.updated_at
    return (JobStatus(job.status) in TERMINAL_STATUSES and job.event_published_at is None
            and now - finished >= policy.requeue_queued_after)


def _bounded(job: JobDoc, policy: ReconcilePolicy, decision: Decision) -> Decision:
    if job.republished >= policy.max_republishes:
        return Decision(Action.FAIL, f"republish_exhausted: published {job.republished} times without an end")
    return decision


class JobPublisher(Protocol):
    """What the reconciler needs from Pub/Sub (soul_common.events.EventPublisher is one)."""

    def republish_job(self, job_id: str, job_type: JobType | str, lane: JobLane | str = ...) -> None: ...

    def job_finished(self, job: JobDoc) -> None: ...


@dataclass
class ReconcileReport:
    republished: list[str] = field(default_factory=list)  # published again, re-queued ones included
    failed: list[str] = field(default_factory=list)
    announced: list[str] = field(default_factory=list)  # finished jobs whose missing event was published
    errors: list[str] = field(default_factory=list)  # jobs whose handling failed this pass (retried next pass)

    def to_json(self) -> dict:
        return {"republished": self.republished, "failed": self.failed, "announced": self.announced,
                "errors": self.errors}


class Reconciler:
    def __init__(self, db: fs.Db, events: JobPublisher, policy: ReconcilePolicy):
        self._db = db
        self._events = events
        self._policy = policy

    def run_once(self) -> list[str]:
        """One pass; the ids of the jobs published again."""
        return self.sweep().republished

    def sweep(self) -> ReconcileReport:
        """One pass over every queued and running job. A job whose handling fails is reported and retried on the
        next pass; it never stops the pass."""
        report = ReconcileReport()
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            query = fs.collection(names.JOBS).where("status", "==", status.value).limit(SCAN_LIMIT)
            for snap in self._db.stream(query):
                try:
                    self._handle(snap, report)
                except Exception as exc:  # noqa: BLE001 - one job's trouble must not stall the others
                    report.errors.append(snap.id)
                    log.warning("reconcile_job_failed", job_id=snap.id, error=repr(exc))
        self._announce(report)
        if report.republished or report.failed or report.errors or report.announced:
            log.info("reconcile_pass", **report.to_json())
        return report

    def _announce(self, report: ReconcileReport) -> None:
        """Publish the completion event of finished jobs whose runner died before publishing it."""
        now = utcnow()
        for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED):
            query = (fs.collection(names.JOBS).where("status", "==", status.value)
                     .where("event_published_at", "==", None).limit(SCAN_LIMIT))
            for snap in self._db.stream(query):
                try:
                    job = JobDoc.model_validate(snap.data)
                    if not needs_announce(job, now, self._policy):
                        continue
                    self._events.job_finished(job)
                    self._db.update(snap.ref, {"event_published_at": utcnow()})
                    report.announced.append(job.job_id)
                except Exception as exc:  # noqa: BLE001 - retried next pass
                    report.errors.append(snap.id)
                    log.warning("reconcile_job_failed", job_id=snap.id, error=repr(exc))

    def _handle(self, snap, report: ReconcileReport) -> None:
        now = utcnow()
        try:
            job = JobDoc.model_validate(snap.data)
        except ValidationError as exc:
            error = JobError(type="InvalidJob", message=f"invalid job document: {exc.errors()[0]['msg']}"[:1000])
            if self._write(snap, _failed(error, now)):
                report.failed.append(snap.id)
                log.warning("job_failed_by_reconciler", job_id=snap.id, reason="invalid_document")
            return
        decision = decide(job, now, self._policy)
        if decision is None:
            return
        if decision.action is Action.FAIL:
            self._fail(snap, job, decision.reason, now, report)
            return
        update = {"published_at": now, "updated_at": now, "republished": fs.increment(1)}
        if decision.action is Action.REQUEUE:
            update.update({"status": JobStatus.QUEUED.value, "stage": "requeued", "lease_owner": None,
                           "lease_expires_at": None})
        if not self._write(snap, update):
            return
        try:
            self._events.republish_job(job.job_id, job.type, job.lane)
        except Exception:
            # Not published after all: say so, so the next pass publishes it at once instead of after the window.
            self._db.update(snap.ref, {"published_at": None})
            raise
        report.republished.append(job.job_id)
        log.info("job_republished", job_id=job.job_id, reason=decision.reason, republished=job.republished + 1)

    def _fail(self, snap, job: JobDoc, reason: str, now: datetime, report: ReconcileReport) -> None:
        error = JobError(type="ReconcilerGaveUp", message=reason)
        update = _failed(error, now)
        if not self._write(snap, update):
            return
        report.failed.append(job.job_id)
        log.warning("job_failed_by_reconciler", job_id=job.job_id, reason=reason)
        finished = job.model_copy(update={**update, "status": JobStatus.FAILED, "error": error})
        self._events.job_finished(finished)
        self._db.update(snap.ref, {"event_published_at": utcnow()})

    def _write(self, snap: fs.Snapshot, update: dict) -> bool:
        """Apply `update` only if the job did not change since `snap`; False if someone else moved it first."""
        try:
            return self._db.update(snap.ref, update, if_unchanged=snap)
        except fs.Missing:
            return False


def _failed(error: JobError, now: datetime) -> dict:
    return {"status": JobStatus.FAILED.value, "stage": "failed", "finished_at": now, "updated_at": now,
            "error": firestore_dict(error), "lease_owner": None, "lease_expires_at": None}
