"""The runner's coordinator: pulls soul-jobs one message at a time per slot, claims the job, runs it with a
heartbeat, writes the outcome, publishes the completion event, then acks. It wires the other modules; the
decisions live in them (claim rules in `leasing`, error policy in `errors`, the work in `image_job`).

State machine (asserted): NEW -> STARTING -> READY <-> PROCESSING -> STOPPING -> STOPPED; a failure to start is
DEFUNCT. SIGTERM stops taking work, lets the running job finish within the grace budget, then releases it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

import structlog
from google.api_core import exceptions as gexc
from google.cloud import firestore, pubsub_v1, storage
from pydantic import ValidationError

from gpu_runner.errors import (
    Disposition,
    InvalidMessage,
    JobCanceled,
    JobNotFound,
    LeaseLost,
    disposition,
)
from gpu_runner import failpoints
from gpu_runner.deadlines import deadline
from gpu_runner.events import EventPublisher
from gpu_runner.failpoints import Failpoints
from gpu_runner.heartbeat import Heartbeat
from gpu_runner.image_job import WorkContext, run_image_job
from gpu_runner.jobstore import JobStore
from gpu_runner.leasing import ClaimDecision
from gpu_runner.models import ModelHost
from gpu_runner.progress import JobSignals, ProgressReporter
from gpu_runner.reconciler import ReconcilePolicy, Reconciler
from gpu_runner.settings import RunnerSettings
from gpu_runner.storage import MediaStore
from schemas import names
from schemas._base import utcnow
from schemas.jobs import JobDoc, JobError, JobEvent, JobRequested, JobStatus, JobType

log = structlog.get_logger(__name__)

ACK_DEADLINE_S = 60


class WorkerState(Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    PROCESSING = "processing"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DEFUNCT = "defunct"


_ALLOWED = {
    WorkerState.NEW: {WorkerState.STARTING},
    WorkerState.STARTING: {WorkerState.READY, WorkerState.DEFUNCT, WorkerState.STOPPING},
    WorkerState.READY: {WorkerState.PROCESSING, WorkerState.STOPPING},
    WorkerState.PROCESSING: {WorkerState.READY, WorkerState.PROCESSING, WorkerState.STOPPING},
    WorkerState.STOPPING: {WorkerState.STOPPING, WorkerState.STOPPED},
    WorkerState.STOPPED: set(),
    WorkerState.DEFUNCT: set(),
}


@dataclass(frozen=True)
class RunnerClients:
    firestore: firestore.Client
    subscriber: pubsub_v1.SubscriberClient
    publisher: pubsub_v1.PublisherClient
    storage: storage.Client


class Runner:
    def __init__(self, settings: RunnerSettings, clients: RunnerClients, models: ModelHost | None = None):
        self._settings = settings
        self._clients = clients
        self._subscription = clients.subscriber.subscription_path(settings.project_id, settings.subscription)
        self._store = JobStore(clients.firestore, settings.runner_id, timedelta(seconds=settings.lease_seconds),
                               settings.firestore_timeout_seconds)
        self._events = EventPublisher(clients.publisher, settings.project_id, settings.pubsub_timeout_seconds)
        self._pubsub_deadline = deadline(settings.pubsub_timeout_seconds)
        self._models = models or ModelHost(settings)
        self._failpoints = Failpoints.from_spec(settings.failpoints, settings.failpoint_seed)
        self._work = WorkContext(settings, self._store, MediaStore(clients.storage, settings.bucket, settings.gcs_timeout_seconds), self._models,
                                 self._failpoints)
        self._reconciler = Reconciler(
            clients.firestore,
            self._events,
            ReconcilePolicy(
                unpublished_after=timedelta(seconds=settings.unpublished_after_seconds),
                requeue_queued_after=timedelta(seconds=settings.requeue_queued_after_seconds),
            ),
        )
        self._state = WorkerState.NEW
        self._state_lock = threading.Lock()
        self._stopping = threading.Event()
        self._busy = 0
        self._active_signals: set[JobSignals] = set()
        self.jobs_done = 0

    # state
    @property
    def state(self) -> WorkerState:
        return self._state

    def _transition(self, new: WorkerState) -> None:
        with self._state_lock:
            assert new in _ALLOWED[self._state], f"runner cannot go from {self._state} to {new}"
            self._state = new

    def _set_busy(self, delta: int) -> None:
        with self._state_lock:
            self._busy += delta
            if self._state in (WorkerState.READY, WorkerState.PROCESSING):
                self._state = WorkerState.PROCESSING if self._busy else WorkerState.READY

    # lifecycle
    def stop(self) -> None:
        """Stop taking work; running jobs get the grace budget, then are released for another runner."""
        if not self._stopping.is_set():
            log.info("runner_stopping", grace_s=self._settings.shutdown_grace_seconds)
            self._stopping.set()
            threading.Thread(target=self._release_after_grace, daemon=True).start()

    def _release_after_grace(self) -> None:
        time.sleep(self._settings.shutdown_grace_seconds)
        for signals in list(self._active_signals):
            signals.shutdown.set()

    def warm(self) -> None:
        """Load the image pipeline now, so the first job does not pay for it."""
        self._models.sdxl()

    def run(self, *, burst: bool = False, max_jobs: int | None = None) -> None:
        """Serve until stop(); in burst mode, return once the subscription is drained (for tests and batch use)."""
        self._transition(WorkerState.STARTING)
        try:
            device = self._models.device  # fail fast on a broken device setup, before taking messages
        except Exception:
            self._transition(WorkerState.DEFUNCT)
            raise
        self._transition(WorkerState.READY)
        log.info("runner_ready", runner_id=self._settings.runner_id, slots=self._settings.max_concurrent_tasks,
                 device=device.name)
        reconciler = threading.Thread(target=self._reconcile_loop, name="reconciler", daemon=True)
        reconciler.start()
        slots = [
            threading.Thread(target=self._slot_loop, args=(burst, max_jobs), name=f"slot-{i}", daemon=True)
            for i in range(self._settings.max_concurrent_tasks)
        ]
        for slot in slots:
            slot.start()
        for slot in slots:
            slot.join()
        self._stopping.set()
        self._transition(WorkerState.STOPPING)
        reconciler.join(timeout=5)
        self._transition(WorkerState.STOPPED)
        log.info("runner_stopped", jobs_done=self.jobs_done)

    def _reconcile_loop(self) -> None:
        while not self._stopping.wait(self._settings.reconcile_interval_seconds):
            try:
                self._reconciler.run_once()
            except Exception:  # noqa: BLE001 - a failed pass is retried next interval
                log.warning("reconcile_failed", exc_info=True)

    def _slot_loop(self, burst: bool, max_jobs: int | None) -> None:
        while not self._stopping.is_set():
            if max_jobs is not None and self.jobs_done >= max_jobs:
                self.stop()
                return
            received = self._pull()
            if not received:
                if burst:
                    return
                time.sleep(self._settings.idle_sleep_seconds)
                continue
            self._set_busy(+1)
            try:
                self.handle(received)
            finally:
                self._set_busy(-1)

    def _pull(self):
        try:
            response = self._clients.subscriber.pull(
                request={"subscription": self._subscription, "max_messages": 1},
                timeout=self._settings.pull_timeout_seconds,
            )
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable, gexc.RetryError):
            return None
        return response.received_messages[0] if response.received_messages else None

    # one message
    def handle(self, received) -> Disposition:
        message = received.message
        attempt = received.delivery_attempt or 1
        # The job_id attribute is only logged: a body that does not parse names no job (issue 13).
        bound = log.bind(message_id=message.message_id, delivery_attempt=attempt,
                         claimed_job_id=str(message.attributes.get("job_id", ""))[:100])
        job_id = None
        try:
            request = _parse(message.data)
            job_id = request.job_id
            bound = bound.bind(job_id=job_id)
            self._run_job(request, received.ack_id)
            decided = Disposition.ACK
        except Exception as exc:  # noqa: BLE001 - every failure goes through the policy table
            decided = disposition(exc)
            bound.warning("job_error", error=repr(exc), disposition=decided.value)
            self._settle_failure(decided, exc, job_id, received, attempt)
        if decided is Disposition.RETRY:
            self._nack(received.ack_id)
        else:
            self._failpoints.hit(failpoints.AFTER_EVENT, job_id=job_id)
            self._ack(received.ack_id)
            self.jobs_done += 1
        return decided

    def _run_job(self, request: JobRequested, ack_id: str) -> None:
        self._failpoints.hit(failpoints.BEFORE_CLAIM, job_id=request.job_id)
        decision, job = self._store.claim(request.job_id, request.type)
        if decision is ClaimDecision.ALREADY_FINISHED:
            if not job.event_published_at:  # the earlier run died between its outcome and its event
                self._publish_outcome(job)
            return
        if decision is ClaimDecision.HELD_ELSEWHERE:
            return
        signals = JobSignals()
        self._active_signals.add(signals)
        progress = ProgressReporter(
            lambda fraction, stage, eta: self._write_progress(job.job_id, fraction, stage, eta),
            signals,
            self._settings.progress_interval_seconds,
        )
        heartbeat = Heartbeat(
            renew_lease=lambda: self._store.renew(job.job_id),
            extend_ack=lambda: self._extend_ack(ack_id),
            signals=signals,
            interval_s=self._settings.heartbeat_seconds,
        )
        try:
            with heartbeat:
                if job.cancel_requested:
                    raise JobCanceled("cancel requested before start")
                outcome = self._dispatch(job, progress)
            progress.close()  # no tick may follow the finish (the write is fenced anyway)
            finished = self._store.finish(job.job_id, JobStatus.SUCCEEDED, result=outcome)
        except JobCanceled:
            progress.close()
            finished = self._store.finish(job.job_id, JobStatus.CANCELED)
        except LeaseLost:
            self._store.forget(job.job_id, job.lease_generation)
            raise
        finally:
            progress.close()
            self._active_signals.discard(signals)
        log.info("job_finished", job_id=job.job_id, status=finished.status, attempts=finished.attempts)
        self._failpoints.hit(failpoints.AFTER_FINISH, job_id=job.job_id)
        self._publish_outcome(finished)

    def _write_progress(self, job_id: str, fraction: float, stage: str, eta: float | None) -> None:
        """Progress is advisory: a failed tick is logged and skipped; a lost lease stops the work (LeaseLost)."""
        try:
            self._store.progress(job_id, fraction, stage, eta)
        except LeaseLost:
            raise
        except Exception:  # noqa: BLE001 - the next tick or the finish writes the state again
            log.warning("progress_write_failed", job_id=job_id, exc_info=True)

    def _dispatch(self, job: JobDoc, progress: ProgressReporter):
        if job.type == JobType.IMAGE:
            return run_image_job(job, self._work, progress)
        from gpu_runner.video_job import run_video_job

        return run_video_job(job, self._work, progress)

    def _publish_outcome(self, job: JobDoc) -> None:
        self._events.job_finished(job)
        self._store.mark_event_published(job.job_id)

    def _settle_failure(self, decided: Disposition, exc: BaseException, job_id, received, attempt: int) -> None:
        error = JobError(type=type(exc).__name__, message=str(exc)[:1000], retryable=decided is Disposition.RETRY)
        try:
            if decided is Disposition.DEAD_LETTER:
                self._events.dead_letter(received.message.data, dict(received.message.attributes), error.message)
            if job_id is None or decided is Disposition.ACK or isinstance(exc, (JobNotFound, InvalidMessage)):
                return  # nothing to record: no job, a message that does not fit its job, or nothing went wrong
            last_attempt = attempt >= names.MAX_DELIVERY_ATTEMPTS
            if decided is Disposition.RETRY and not last_attempt:
                self._store.release(job_id, error)
                return
            # Terminal, or the last retry before the dead-letter topic: the job must not stay "running".
            if not self._store.fail_unowned(job_id, error):
                return  # terminal already, or another runner holds a live lease: its message decides
            job = self._store.get(job_id)
            if job is not None:
                self._publish_outcome(job)
            elif job is None:  # the document no longer validates: announce the failure from what we know
                kind = JobType.IMAGE if job_id.startswith("img-") else JobType.VIDEO
                self._events.publish(
                    JobEvent(job_id=job_id, type=kind, status=JobStatus.FAILED, error=error, occurred_at=utcnow())
                )
                self._store.mark_event_published(job_id)
        except Exception:  # noqa: BLE001 - the message is nacked or parked anyway; the reconciler re-checks
            log.warning("settle_failure_failed", job_id=job_id, exc_info=True)

    # Pub/Sub acks
    def _ack(self, ack_id: str) -> None:
        try:
            self._clients.subscriber.acknowledge(request={"subscription": self._subscription, "ack_ids": [ack_id]},
                                                   **self._pubsub_deadline)
        except Exception:  # noqa: BLE001 - an ack lost means a redelivery, which the job lease makes harmless
            log.warning("ack_failed", exc_info=True)

    def _nack(self, ack_id: str) -> None:
        try:
            self._clients.subscriber.modify_ack_deadline(
                request={"subscription": self._subscription, "ack_ids": [ack_id], "ack_deadline_seconds": 0},
                **self._pubsub_deadline,
            )
        except Exception:  # noqa: BLE001 - the deadline expires by itself
            log.warning("nack_failed", exc_info=True)

    def _extend_ack(self, ack_id: str) -> None:
        self._clients.subscriber.modify_ack_deadline(
            request={"subscription": self._subscription, "ack_ids": [ack_id], "ack_deadline_seconds": ACK_DEADLINE_S},
            **self._pubsub_deadline,
        )


def _parse(data: bytes) -> JobRequested:
    try:
        return JobRequested.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidMessage(f"not a JobRequested message: {where}: {first['msg']}") from exc
