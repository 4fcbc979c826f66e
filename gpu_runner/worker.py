"""The runner's coordinator: wires the pipeline's stages and decides what happens to each message. Intake
(`intake.py`: lanes, look-ahead) pulls and claims the next job(s) while one renders (`render.py`: the only device
user, batching), and the finish stage (`finish.py`: upload, variant, finish, event) overlaps the next render;
bounded queues between them. The decisions live in the other modules (claim rules in `leasing`, error policy in
`errors`, the work in `image_job`/`video_job`); this module turns outcomes into acks, nacks and settlements.

State machine (asserted): NEW -> STARTING -> READY <-> PROCESSING -> STOPPING -> STOPPED; a failure to start is
DEFUNCT. SIGTERM stops intake, releases claimed-but-unstarted jobs at once (Firestore release + nack), lets the
rendering job finish within the grace budget, then releases it."""

from __future__ import annotations

import queue
import threading
import time
from datetime import timedelta
from enum import Enum
from pathlib import Path

import structlog
from pydantic import ValidationError

from gpu_runner import failpoints
from gpu_runner.errors import (
    Disposition,
    InvalidMessage,
    JobCanceled,
    JobNotFound,
    LeaseLost,
    TransientError,
    disposition,
)
from soul_common.events import EventPublisher
from gpu_runner.failpoints import Failpoints
from gpu_runner.stages.finish import FinishStage, stop_keepalive
from gpu_runner.stages.heartbeat import Heartbeat
from gpu_runner.stages.image_job import WorkContext, plan_image
from gpu_runner.stages.intake import LookAhead
from gpu_runner.stages.records import Ticket
from gpu_runner.adapters.jobstore import JobStore
from gpu_runner.leasing import ClaimDecision
from gpu_runner.pipelines.host import ModelHost
from gpu_runner.stages.progress import JobSignals, ProgressReporter
from soul_common.reconciler import PassLease, ReconcilePolicy, Reconciler
from gpu_runner.stages.render import RenderStage, default_max_batch, gather
from gpu_runner.settings import RunnerSettings
from gpu_runner.adapters.clients import RunnerClients
from gpu_runner.adapters.pubsub import Acks, LanePuller
from gpu_runner.adapters.storage import BucketArtifactStore, MediaStore
from soul_common.firestore import Db
from schemas import names
from schemas._base import utcnow
from schemas.jobs import JobDoc, JobError, JobEvent, JobRequested, JobStatus, JobType

log = structlog.get_logger(__name__)

STAGE_POLL_S = 0.05


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


def bucket_artifact_stores(settings: RunnerSettings, clients: RunnerClients) -> list:
    """Compile artifacts in the bucket as well as on the VM's disk, unless the prefix is empty."""
    if not settings.compile_cache_prefix:
        return []
    media = MediaStore(clients.storage, settings.bucket, settings.gcs_timeout_seconds)
    return [BucketArtifactStore(media, settings.compile_cache_prefix)]


class Runner:
    def __init__(self, settings: RunnerSettings, clients: RunnerClients, models: ModelHost | None = None):
        self._settings = settings
        self._clients = clients
        self._paths = [clients.subscriber.subscription_path(settings.project_id, sub)
                       for sub in settings.subscription_list]
        self._db = Db(clients.firestore, timeout_s=settings.firestore_timeout_seconds)
        self._store = JobStore(self._db, settings.runner_id, timedelta(seconds=settings.lease_seconds),
                               job_retention=timedelta(days=settings.job_retention_days))
        self._events = EventPublisher(clients.publisher, settings.project_id, settings.pubsub_timeout_seconds)
        self._acks = Acks(clients.subscriber, settings.pubsub_timeout_seconds)
        self._models = models or ModelHost(settings, artifact_stores=bucket_artifact_stores(settings, clients))
        self._failpoints = Failpoints.from_spec(settings.failpoints, settings.failpoint_seed)
        self._work = WorkContext(settings, self._store,
                                 MediaStore(clients.storage, settings.bucket, settings.gcs_timeout_seconds),
                                 self._models, self._failpoints)
        model_tag = Path(settings.sdxl_model).name if settings.sdxl_model else "tiny-sdxl"
        self._render = RenderStage(self._work, model_tag, self._events.job_started)
        video_tag = Path(settings.svd_model).name if settings.svd_model else "tiny-svd"
        self._finish = FinishStage(self._work, self._store, self._events, model_tag, video_model_tag=video_tag)
        self._puller = LanePuller(clients.subscriber, self._paths, settings.pull_timeout_seconds)
        self._lookahead: LookAhead | None = None
        self._finishing: queue.Queue[Ticket] = queue.Queue(maxsize=4)
        self._reconciler = Reconciler(
            self._db,
            self._events,
            ReconcilePolicy(
                unpublished_after=timedelta(seconds=settings.unpublished_after_seconds),
                requeue_queued_after=timedelta(seconds=settings.requeue_queued_after_seconds),
                job_retention=timedelta(days=settings.job_retention_days),
            ),
        )
        # One reconciler pass per interval for the whole fleet: whoever takes the lease runs it.
        self._reconcile_lease = PassLease(self._db, settings.runner_id,
                                          timedelta(seconds=settings.reconcile_interval_seconds))
        self._state = WorkerState.NEW
        self._state_lock = threading.Lock()
        self._stopping = threading.Event()
        self._intake_done = threading.Event()
        self._busy = 0
        self._inflight = 0  # claimed jobs not yet acked or nacked
        self._active_signals: set[JobSignals] = set()
        self.jobs_done = 0
        self.last_tick = time.monotonic()  # health: updated every intake loop iteration, idle or not
        self.max_batch = settings.max_batch or 1

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

    def _count_inflight(self, delta: int) -> None:
        with self._state_lock:
            self._inflight += delta

    # lifecycle
    def stop(self) -> None:
        """Stop taking work; waiting jobs are released now, the rendering one gets the grace budget."""
        if not self._stopping.is_set():
            log.info("runner_stopping", grace_s=self._settings.shutdown_grace_seconds)
            self._stopping.set()
            threading.Thread(target=self._release_after_grace, daemon=True).start()

    def _release_after_grace(self) -> None:
        time.sleep(self._settings.shutdown_grace_seconds)
        for signals in list(self._active_signals):
            signals.shutdown.set()

    def warm(self) -> None:
        """Load (quantize, compile) the image pipeline and the safety checker now and render once, so the first job
        pays for none of it."""
        self._models.checker()
        self._models.warm_sdxl()

    def startup_report(self) -> dict:
        """The start-up phases so far (pipelines/startup.py), for the health port."""
        return self._models.startup.snapshot()

    def run(self, *, burst: bool = False, max_jobs: int | None = None) -> None:
        """Serve until stop(); in burst mode, return once the subscriptions are drained (for tests and batch use)."""
        self._transition(WorkerState.STARTING)
        try:
            device = self._models.device  # fail fast on a broken device setup, before taking messages
        except Exception:
            self._transition(WorkerState.DEFUNCT)
            raise
        self.max_batch = self._settings.max_batch or default_max_batch(_free_device_bytes(device))
        capacity = max(self._settings.lookahead, self.max_batch - 1)
        self._lookahead = LookAhead(max(capacity, 1))
        self._recover_orphans()
        self._transition(WorkerState.READY)
        log.info("runner_ready", runner_id=self._settings.runner_id, device=device.name, lanes=self._paths,
                 lookahead=self._settings.lookahead, max_batch=self.max_batch)
        reconciler = threading.Thread(target=self._reconcile_loop, name="reconciler", daemon=True)
        reconciler.start()
        renderers = [threading.Thread(target=self._render_loop, name=f"render-{i}", daemon=True)
                     for i in range(self._settings.max_concurrent_tasks)]
        finisher = threading.Thread(target=self._finish_loop, args=(renderers,), name="finish", daemon=True)
        for thread in (*renderers, finisher):
            thread.start()
        self._intake_loop(burst, max_jobs)
        for thread in (*renderers, finisher):
            thread.join()
        self._stopping.set()
        self._transition(WorkerState.STOPPING)
        reconciler.join(timeout=5)
        self._transition(WorkerState.STOPPED)
        log.info("runner_stopped", jobs_done=self.jobs_done)

    def _recover_orphans(self) -> None:
        """What this runner id held when its previous process died goes back to the queue now, not after that
        process's lease and its messages' ack deadline (soul_common/reconciler.py)."""
        try:
            report = self._reconciler.recover_orphans(self._settings.runner_id)
        except Exception:  # noqa: BLE001 - the periodic pass takes them once their leases run out
            log.warning("recover_orphans_failed", exc_info=True)
            return
        if report.republished or report.failed:
            log.info("orphans_recovered", requeued=report.republished, failed=report.failed)

    def _reconcile_loop(self) -> None:
        while not self._stopping.wait(self._settings.reconcile_interval_seconds):
            try:
                self._reconciler.run_leased(self._reconcile_lease)
            except Exception:  # noqa: BLE001 - a failed pass is retried next interval
                log.warning("reconcile_failed", exc_info=True)

    # the stages' loops
    def _intake_loop(self, burst: bool, max_jobs: int | None) -> None:
        idle, empty_since = self._settings.idle_sleep_seconds, None
        try:
            while not self._stopping.is_set():
                self.last_tick = time.monotonic()
                if max_jobs is not None and self.jobs_done + self._inflight >= max_jobs:
                    if not self._inflight:
                        return
                    time.sleep(STAGE_POLL_S)
                    continue
                if not self._room_for_intake():
                    continue
                pulled = self._puller.pull()
                if pulled is None:
                    empty_since = empty_since or time.monotonic()
                    # A burst ends once every lane stayed empty for a pull timeout with nothing in flight (a nacked
                    # message comes back within that).
                    if burst and not self._inflight and \
                            time.monotonic() - empty_since >= self._settings.pull_timeout_seconds:
                        return
                    time.sleep(idle)
                    idle = min(max(idle * 2, 0.01), max(self._settings.idle_sleep_seconds, 0.5))
                    continue
                idle, empty_since = self._settings.idle_sleep_seconds, None
                received, path, lane = pulled
                ticket = self.admit(received, path, lane)
                if isinstance(ticket, Ticket):
                    self._lookahead.put(ticket)
        finally:
            self._intake_done.set()
            for ticket in self._lookahead.drain():  # claimed, never started: another runner takes them now
                self.complete(ticket, TransientError("runner stopping; job released before it started"))

    def _room_for_intake(self) -> bool:
        """Look-ahead: claim the next job while one renders, at most `lookahead` (or a batch's worth) waiting;
        with lookahead 0, only once the device is idle."""
        if self._settings.lookahead == 0 and self.max_batch <= 1:
            if self._busy or len(self._lookahead):
                time.sleep(0.005)
                return False
            return True
        return self._lookahead.wait_for_room(STAGE_POLL_S)

    def _render_loop(self) -> None:
        while True:
            first = self._lookahead.take(STAGE_POLL_S)
            if first is None:
                if self._intake_done.is_set():
                    return
                continue
            self._set_busy(+1)
            try:
                self._render.prepare(first)
                batch = [first] if first.error else gather(
                    first, self._lookahead, self.max_batch, self._settings.batch_wait_seconds
                )
                self._render.render(batch)
            finally:
                self._set_busy(-1)
            for ticket in batch:
                self._finishing.put(ticket)

    def _finish_loop(self, renderers: list[threading.Thread]) -> None:
        while True:
            try:
                ticket = self._finishing.get(timeout=STAGE_POLL_S)
            except queue.Empty:
                if not any(thread.is_alive() for thread in renderers) and self._finishing.empty():
                    return
                continue
            self.complete(ticket)

    # one message
    def handle(self, received) -> Disposition:
        """One message through all the stages in the calling thread (tests and tools)."""
        ticket = self.admit(received, self._paths[0], 0)
        if not isinstance(ticket, Ticket):
            return ticket
        self._render.render([ticket])
        return self.complete(ticket)

    def admit(self, received, path: str, lane: int) -> Ticket | Disposition:
        """Intake of one message: parse, claim, plan. Returns the claimed job's ticket, or how the message was
        settled when there is nothing to run (a duplicate, a job held elsewhere, an unusable message)."""
        message = received.message
        attempt = received.delivery_attempt or 1
        # The job_id attribute is only logged: a body that does not parse names no job (issue 13).
        bound = log.bind(message_id=message.message_id, delivery_attempt=attempt, lane=lane,
                         claimed_job_id=str(message.attributes.get("job_id", ""))[:100])
        job_id = None
        try:
            request = _parse(message.data)
            job_id = request.job_id
            self._failpoints.hit(failpoints.BEFORE_CLAIM, job_id=job_id)
            decision, job = self._store.claim(request.job_id, request.type)
            if decision is ClaimDecision.ALREADY_FINISHED and not job.event_published_at:
                self._finish.publish_outcome(job)  # the earlier run died between its outcome and its event
            if decision is not ClaimDecision.CLAIM:
                self._settle_message(received, path, Disposition.ACK, job_id)
                return Disposition.ACK
        except Exception as exc:  # noqa: BLE001 - every failure goes through the policy table
            decided = disposition(exc)
            bound.warning("job_error", error=repr(exc), disposition=decided.value)
            self._settle_failure(decided, exc, job_id, received, attempt)
            self._settle_message(received, path, decided, job_id)
            return decided
        ticket = self._ticket(received, path, lane, request, job)
        try:
            if job.type == JobType.IMAGE:
                ticket.plan = plan_image(job, self._work)
        except Exception as exc:  # noqa: BLE001 - settled like any failure of this job
            ticket.error = exc
        return ticket

    def _ticket(self, received, path: str, lane: int, request: JobRequested, job) -> Ticket:
        signals = JobSignals()
        self._active_signals.add(signals)
        self._count_inflight(+1)
        progress = ProgressReporter(
            lambda fraction, stage, eta, preview=None: self._write_progress(job, fraction, stage, eta, preview),
            signals,
            self._settings.progress_interval_seconds,
            background=True,
            last_doc_write=lambda: self._store.last_write(job.job_id),
            doc_gap_s=self._settings.job_write_gap_seconds,
        )
        heartbeat = Heartbeat(
            renew_lease=lambda: self._store.renew(job.job_id),
            extend_ack=lambda: self._acks.extend(path, received.ack_id),
            signals=signals,
            interval_s=self._settings.heartbeat_seconds,
        ).start()
        return Ticket(received=received, subscription=path, lane=lane, request=request, job=job, signals=signals,
                      progress=progress, heartbeat=heartbeat)

    def complete(self, ticket: Ticket, error: BaseException | None = None) -> Disposition:
        """Finish stage of one claimed job: its outcome written and announced, then its message acked; or its
        failure settled by the policy table (release + nack, fail, dead-letter)."""
        job_id = ticket.job.job_id
        error = error or ticket.error
        try:
            try:
                if error is not None:
                    raise error
                self._finish.succeed(ticket)
            except JobCanceled:
                self._finish.cancel(ticket)
            decided = Disposition.ACK
        except Exception as exc:  # noqa: BLE001 - every failure goes through the policy table
            stop_keepalive(ticket)
            decided = disposition(exc)
            log.warning("job_error", job_id=job_id, error=repr(exc), disposition=decided.value)
            self._settle_failure(decided, exc, job_id, ticket.received, ticket.received.delivery_attempt or 1)
            if isinstance(exc, LeaseLost):
                self._store.forget(job_id, ticket.job.lease_generation)
        finally:
            stop_keepalive(ticket)
            self._active_signals.discard(ticket.signals)
        self._settle_message(ticket.received, ticket.subscription, decided, job_id)
        self._count_inflight(-1)
        return decided

    def _write_progress(self, job: JobDoc, fraction: float, stage: str, eta: float | None, preview=None) -> None:
        """Progress is advisory: a failed tick is logged and skipped; a lost lease stops the work (LeaseLost).
        THE place where progress is reported; a job whose webhooks asked for `progress` also gets a (throttled)
        soul.job.progress event."""
        try:
            self._store.progress(job.job_id, fraction, stage, eta, preview)
        except LeaseLost:
            raise
        except Exception:  # noqa: BLE001 - the next tick or the finish writes the state again
            log.warning("progress_write_failed", job_id=job.job_id, exc_info=True)
            return
        if "progress" in job.notify:
            try:
                self._events.job_progress(job, fraction, stage, eta, preview)
            except Exception:  # noqa: BLE001 - advisory, like the write above
                log.warning("progress_event_failed", job_id=job.job_id, exc_info=True)

    def _settle_message(self, received, path: str, decided: Disposition, job_id) -> None:
        if decided is Disposition.RETRY:
            self._acks.nack(path, received.ack_id)
            return
        self._failpoints.hit(failpoints.AFTER_EVENT, job_id=job_id)
        self._acks.ack(path, received.ack_id)
        self.jobs_done += 1

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
                self._finish.publish_outcome(job)
            elif job is None:  # the document no longer validates: announce the failure from what we know
                kind = JobType.IMAGE if job_id.startswith("img-") else JobType.VIDEO
                self._events.publish(
                    JobEvent(job_id=job_id, type=kind, status=JobStatus.FAILED, error=error, occurred_at=utcnow())
                )
                self._store.mark_event_published(job_id)
        except Exception:  # noqa: BLE001 - the message is nacked or parked anyway; the reconciler re-checks
            log.warning("settle_failure_failed", job_id=job_id, exc_info=True)


def _free_device_bytes(device) -> int | None:
    from gpu_runner.pipelines.device import free_device_bytes  # deferred: loads torch

    return free_device_bytes(device)


def _parse(data: bytes) -> JobRequested:
    try:
        return JobRequested.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidMessage(f"not a JobRequested message: {where}: {first['msg']}") from exc
