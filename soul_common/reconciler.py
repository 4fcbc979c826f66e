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
- running under the lease of a runner id whose process has just started (`recover_orphans`: a runner restarted
  in place, a systemd or supervisor restart under the same id, holds nothing yet): re-queue and publish at once,
  instead of after the dead process's lease and its message's ack deadline (a runner id names one process at a
  time: the runner's settings);
- a non-terminal document that no longer validates: fail it (it can never run, it must not stay queued);
- a finished job whose completion event was never published (its runner died between the two, and its message
  is gone too) after the same window: publish the event (consumers dedup on the CloudEvent id = job id).
Every change is a write conditional on the document's update time, so concurrent reconcilers and runners never
both act on one observation; a publish that fails is undone (published_at cleared) so the next pass retries it.

How it scales: each scan (queued, running, finished-without-event) is ordered by document id and read in pages
of `page_size` with a cursor, so every job is reached however long the backlog (an unordered `limit` would read
the same first page forever). One pass at a time for the whole deployment: the runners' loops and the scheduled
function take `leases/reconciler` first (`PassLease`: held during a pass, and taken only once the taker's
interval has passed since the last pass ended, so the deployment makes one pass per interval however many
runners there are), and a leased pass reads at most `max_pages` pages per scan, keeping
its cursors in the lease document so the next pass goes on from there and wraps around at the end."""

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
from soul_common import reservations, retention
from soul_common.delivery import LANES, policy

log = structlog.get_logger(__name__)

PAGE_SIZE = 300
ORPHANS_READ = 100  # running jobs one restarted runner id may have held (its batch and look-ahead: a handful)


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
    page_size: int = PAGE_SIZE
    # Pages per scan in one leased pass (the rest on the next pass, from the cursor); None: the whole scan.
    max_pages: int | None = 20
    # A job it fails is kept this long, then Firestore's TTL deletes it (soul_common/retention.py).
    job_retention: timedelta = retention.JOB_RETENTION


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
        return requeue(job, policy, "lease_expired")
    return None


def requeue(job: JobDoc, policy: ReconcilePolicy, reason: str) -> Decision:
    """A running job whose runner is gone: back to the queue, unless it has used up its attempts or republishes."""
    if job.attempts >= policy.max_attempts:
        return Decision(Action.FAIL, f"attempts_exhausted: {job.attempts} runners lost this job")
    return _bounded(job, policy, Decision(Action.REQUEUE, reason))


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
    scanned: int = 0  # job documents read
    pages: int = 0  # queries made

    def to_json(self) -> dict:
        return {"republished": self.republished, "failed": self.failed, "announced": self.announced,
                "errors": self.errors, "scanned": self.scanned, "pages": self.pages}


class PassLease:
    """`leases/reconciler`: who runs the deployment's reconciler pass now, when the last one finished, and where
    each scan goes on. Taken with a conditional write (one taker wins) and held for the pass (at most `hold`: a
    holder that died is replaced after that); released when the pass ends. A taker also waits until `every` has
    passed since the last pass finished, whoever ran it, so the deployment makes one pass per `every` however
    many runners try (each runner's loop and the scheduled function bring their own interval)."""

    def __init__(self, db: fs.Db, holder: str, every: timedelta, *, hold: timedelta = timedelta(minutes=5),
                 name: str = "reconciler"):
        self._db = db
        self.holder = holder
        self._every = every
        self._hold = hold
        self._ref = fs.doc(names.LEASES, name)

    def take(self, now: datetime | None = None) -> dict[str, str | None] | None:
        """The scan cursors when this holder now holds the lease; None when a pass runs elsewhere or the last one
        finished less than `every` ago."""
        now = now or utcnow()
        snap = self._db.get(self._ref)
        data = snap.data or {}
        expires, finished = data.get("expires_at"), data.get("finished_at")
        if snap.exists and data.get("holder") != self.holder and expires is not None and expires > now:
            return None
        if finished is not None and now - finished < self._every:
            return None
        claim = {"holder": self.holder, "taken_at": now, "expires_at": now + self._hold}
        if not snap.exists:
            taken = self._db.create(self._ref, {**claim, "cursors": {}})
        else:
            try:
                taken = self._db.update(self._ref, claim, if_unchanged=snap)
            except fs.Missing:
                taken = False
        return dict(data.get("cursors") or {}) if taken else None

    def release(self, cursors: dict[str, str | None]) -> None:
        """The pass ended: store where each scan goes on and when it finished (a late pass overwriting them
        only moves where the next one starts)."""
        now = utcnow()
        self._db.update(self._ref, {"cursors": cursors, "finished_at": now, "expires_at": now})


class Reconciler:
    def __init__(self, db: fs.Db, events: JobPublisher, policy: ReconcilePolicy):
        self._db = db
        self._events = events
        self._policy = policy

    def recover_orphans(self, runner_id: str) -> ReconcileReport:
        """Re-queue and publish the running jobs leased to `runner_id` (called by a runner of that id before it
        takes any work: what its id holds was held by its previous process, now dead), within the usual bounds
        on attempts and republishes."""
        report = ReconcileReport()
        query = (fs.collection(names.JOBS).where("status", "==", JobStatus.RUNNING.value)
                 .where("lease_owner", "==", runner_id).limit(ORPHANS_READ))
        for snap in self._db.stream(query):
            try:
                self._handle(snap, report, orphaned=True)
            except Exception as exc:  # noqa: BLE001 - the periodic pass takes it once its lease runs out
                report.errors.append(f"{snap.id}: {type(exc).__name__}")
        return report

    def run_once(self) -> list[str]:
        """One pass; the ids of the jobs published again."""
        return self.sweep().republished

    def sweep(self) -> ReconcileReport:
        """One whole pass over every queued, running and unannounced finished job, page by page (no lease: for
        tests and tools). A job whose handling fails is reported and retried on the next pass; it never stops the
        pass."""
        cursors: dict[str, str | None] = {}
        return self._pass(cursors, max_pages=None)

    def run_leased(self, lease: PassLease) -> ReconcileReport | None:
        """The deployment's pass, when `lease` is taken (None when another holder runs it): at most
        `policy.max_pages` pages per scan, from where the last pass stopped."""
        cursors = lease.take()
        if cursors is None:
            return None
        try:
            return self._pass(cursors, max_pages=self._policy.max_pages)
        finally:
            lease.release(cursors)

    def _pass(self, cursors: dict[str, str | None], max_pages: int | None) -> ReconcileReport:
        report = ReconcileReport()
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            query = fs.collection(names.JOBS).where("status", "==", status.value)
            self._scan(status.value, query, cursors, max_pages, report, self._handle)
        for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED):
            query = fs.collection(names.JOBS).where("status", "==", status.value).where("event_published_at", "==", None)
            self._scan(f"{status.value}_unannounced", query, cursors, max_pages, report, self._announce)
        if report.republished or report.failed or report.errors or report.announced:
            log.info("reconcile_pass", **report.to_json())
        return report

    def _scan(self, name: str, query: fs.Query, cursors: dict[str, str | None], max_pages: int | None,
              report: ReconcileReport, handle) -> None:
        """Read `query` in id order, a page at a time, from `cursors[name]`; leave there where to go on (None:
        the scan reached the end, the next one starts from the beginning)."""
        after = cursors.get(name)
        pages = 0
        while max_pages is None or pages < max_pages:
            page = query.order_by("__name__").limit(self._policy.page_size)
            snaps = self._db.stream(page.start_after_id(after) if after else page)
            pages += 1
            report.pages += 1
            report.scanned += len(snaps)
            for snap in snaps:
                try:
                    handle(snap, report)
                except Exception as exc:  # noqa: BLE001 - one job's trouble must not stall the others
                    report.errors.append(snap.id)
                    log.warning("reconcile_job_failed", job_id=snap.id, error=repr(exc))
            if len(snaps) < self._policy.page_size:
                after = None
                break
            after = snaps[-1].id
        cursors[name] = after

    def _announce(self, snap, report: ReconcileReport) -> None:
        """Publish the completion event of a finished job whose runner died before publishing it."""
        job = JobDoc.model_validate(snap.data)
        if not needs_announce(job, utcnow(), self._policy):
            return
        self._events.job_finished(job)
        self._db.update(snap.ref, {"event_published_at": utcnow()})
        report.announced.append(job.job_id)

    def _handle(self, snap, report: ReconcileReport, *, orphaned: bool = False) -> None:
        now = utcnow()
        try:
            job = JobDoc.model_validate(snap.data)
        except ValidationError as exc:
            error = JobError(type="InvalidJob", message=f"invalid job document: {exc.errors()[0]['msg']}"[:1000])
            if self._write(snap, _failed(error, now, self._policy.job_retention)):
                reservations.settle(self._db, (snap.data or {}).get("gpu_reservation"), now)
                report.failed.append(snap.id)
                log.warning("job_failed_by_reconciler", job_id=snap.id, reason="invalid_document")
            return
        decision = decide(job, now, self._policy)
        if decision is None and orphaned and job.status == JobStatus.RUNNING:
            decision = requeue(job, self._policy, "runner_restarted")
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
        update = _failed(error, now, self._policy.job_retention)
        if not self._write(snap, update):
            return
        reservations.settle(self._db, (snap.data or {}).get("gpu_reservation"), now)
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


def _failed(error: JobError, now: datetime, keep: timedelta) -> dict:
    return {**retention.expires(names.JOBS, now, keep), "status": JobStatus.FAILED.value, "stage": "failed", "finished_at": now, "updated_at": now,
            "error": firestore_dict(error), "lease_owner": None, "lease_expires_at": None}
