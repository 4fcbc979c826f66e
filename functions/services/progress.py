"""Live progress, shared: the followers of one task on one instance share one watcher, so the reads a followed
job costs do not grow with its followers (issue 18), and how many streams an instance holds is bounded per
tenant and per instance (issue 19).

`ProgressHub` owns one poll thread for the whole process. Each interval it reads every followed job once (the
job document, plus its place in line while queued) and, when something changed, publishes a new `Snapshot` to
that job's `Watch`; followers wait on the watch (from a thread, or from an event loop: `wait` / `await
wait_async`) and turn the snapshot into their own tenant's view. Reads per second = followed jobs x (1 + queued)
/ `sse_poll_interval_s`, whatever the number of followers; a follower that joins a watched job costs no read at
all (its visibility is checked on the watch's current snapshot). A watch with no follower left is dropped at the
next interval; the thread ends when nothing is watched.

Admission is data: `StreamCaps` (per tenant, per instance) decided by `admit()`; a refusal is a 429 with a
Retry-After, answered before anything is read, so a hoarding tenant is turned away instead of starving
others."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from functions.core import errors
from functions.services.tasks import TaskService
from schemas.api import Task
from schemas.jobs import TERMINAL_STATUSES, JobDoc, JobStatus

log = structlog.get_logger(__name__)

# A backend error on a watch's read is retried at the next interval; after this many in a row the followers are
# told to reconnect (the stream ends with `event: error`) rather than waiting on a job nobody can read.
MAX_READ_FAILURES = 3


@dataclass(frozen=True)
class StreamCaps:
    """How many event streams one instance holds at most, in all and per tenant."""

    per_instance: int
    per_tenant: int
    retry_after_s: float


def admit(caps: StreamCaps, open_total: int, open_for_tenant: int) -> str | None:
    """None when one more stream fits; otherwise why not (the 429's message)."""
    if open_for_tenant >= caps.per_tenant:
        return f"this tenant already follows {open_for_tenant} tasks on this instance (at most {caps.per_tenant})"
    if open_total >= caps.per_instance:
        return f"this instance already serves {open_total} event streams (at most {caps.per_instance})"
    return None


@dataclass(frozen=True)
class Snapshot:
    """What the watcher last read of one job: `job` None when it is gone; `failed` when it can no longer be read."""

    version: int
    job: JobDoc | None
    queue_position: int | None = None
    failed: bool = False

    @property
    def terminal(self) -> bool:
        return self.job is not None and JobStatus(self.job.status) in TERMINAL_STATUSES


class Watch:
    """One followed job: its latest snapshot, and whoever waits for the next one (threads and event loops)."""

    def __init__(self, task_id: str):
        self.task_id = task_id
        self.followers = 0
        self.failures = 0
        self.snapshot: Snapshot | None = None
        self.seeded = threading.Event()
        self._cond = threading.Condition()
        # Futures of coroutines waiting, per event loop; settled (and the lists dropped) at each publish. A waiter
        # that timed out stays listed until then: at most one per follower per heartbeat.
        self._loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
        self._views_lock = threading.Lock()
        self._views: tuple[int, dict[object, object]] = (0, {})

    def publish(self, job: JobDoc | None, queue_position: int | None = None, *, failed: bool = False) -> bool:
        """Store a new snapshot and wake every waiter; False (nothing sent) when nothing changed."""
        with self._cond:
            last = self.snapshot
            if last is not None and not failed and not last.failed and last.job == job \
                    and last.queue_position == queue_position:
                return False
            self.snapshot = Snapshot((last.version + 1) if last else 1, job, queue_position, failed)
            self._cond.notify_all()
            loops, self._loops = self._loops, {}
        self.seeded.set()
        for loop, waiters in loops.items():  # one wake-up per event loop, however many followers wait in it
            try:
                loop.call_soon_threadsafe(_settle, waiters)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass
        return True

    def wait(self, after: int, timeout: float) -> Snapshot | None:
        """The first snapshot newer than version `after`, or None after `timeout` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self.snapshot is not None and self.snapshot.version > after, timeout)
            snap = self.snapshot
        return snap if snap is not None and snap.version > after else None

    async def wait_async(self, after: int, timeout: float) -> Snapshot | None:
        """`wait` for a coroutine: holds no thread while it waits. A plain future settled by `publish` or by a
        timer, never `asyncio.wait_for` (Python 3.11's can swallow the cancellation that ends a stream)."""
        loop = asyncio.get_running_loop()
        with self._cond:
            snap = self.snapshot
            if snap is not None and snap.version > after:
                return snap
            waiter = loop.create_future()
            self._loops.setdefault(loop, []).append(waiter)
        timer = loop.call_later(timeout, _settle, [waiter])
        try:
            await waiter
        finally:
            timer.cancel()
        snap = self.snapshot
        return snap if snap is not None and snap.version > after else None

    def rendered(self, snap: Snapshot, viewer: object, make: Callable[[], object]) -> object:
        """What `make()` gives for `snap` as `viewer` (tenant, admin) sees it, made once per snapshot and viewer:
        followers of one tenant share one rendering (and one signing) of each change."""
        with self._views_lock:
            version, views = self._views
            if version != snap.version:
                views = {}
                self._views = (snap.version, views)
            if viewer not in views:
                views[viewer] = make()
            return views[viewer]


# Followers woken per turn of an event loop: a thousand followers of one job wake in batches, so the loop serves
# other connections between them instead of after all of them.
SETTLE_BATCH = 64


def _settle(waiters: list[asyncio.Future]) -> None:
    for waiter in waiters[:SETTLE_BATCH]:
        if not waiter.done():
            waiter.set_result(None)
    if len(waiters) > SETTLE_BATCH:
        asyncio.get_running_loop().call_soon(_settle, waiters[SETTLE_BATCH:])


@dataclass
class Follow:
    """One follower's hold on a watch and on its stream slot; `close()` gives both back (idempotent)."""

    hub: ProgressHub
    watch: Watch
    tenant: str
    admin: bool = False  # the content policy's viewer differs for admins
    closed: bool = field(default=False)

    def view(self, snap: Snapshot) -> Task:
        """`snap` as this follower's tenant sees it (NotFound once the job no longer shows to it)."""
        return self.hub.view(snap, self.tenant, admin=self.admin)

    def rendered(self, snap: Snapshot, render: Callable[[Task | None], object]) -> object:
        """`render(view)` of `snap` for this tenant (`render(None)` when it no longer shows), shared by its
        followers."""
        def make() -> object:
            try:
                return render(self.view(snap))
            except errors.NotFound:
                return render(None)
        return self.watch.rendered(snap, (self.tenant, self.admin), make)

    def close(self) -> None:
        self.hub._release(self)


class ProgressHub:
    """The process's watchers of followed jobs and its stream slots."""

    def __init__(self, tasks: TaskService, *, poll_interval_s: float, caps: StreamCaps,
                 transient: tuple[type[BaseException], ...] = (), clock: Callable[[], float] = time.monotonic):
        self._tasks = tasks
        self._transient = (errors.SoulError, *transient)  # a backend that failed this read (the wiring names them)
        self._interval = poll_interval_s
        self.caps = caps
        self._clock = clock
        self._lock = threading.Lock()
        self._watches: dict[str, Watch] = {}
        self._open: dict[str, int] = {}  # tenant -> open streams on this instance
        self._thread: threading.Thread | None = None

    # ---- followers ---------------------------------------------------------------------------------------

    def follow(self, task_id: str, tenant: str, *, admin: bool = False) -> tuple[Follow, Snapshot]:
        """A slot and a hold on `task_id`'s watch, with its current snapshot. TooManyRequests when a cap is full
        (nothing read); NotFound when the task does not show to `tenant` (the slot is given back)."""
        with self._lock:
            refusal = admit(self.caps, sum(self._open.values()), self._open.get(tenant, 0))
            if refusal is not None:
                raise errors.TooManyRequests(f"{refusal}; retry later", retry_after=self.caps.retry_after_s,
                                            code="too_many_streams")
            self._open[tenant] = self._open.get(tenant, 0) + 1
            watch = self._watches.get(task_id)
            seed = watch is None
            if seed:
                watch = self._watches[task_id] = Watch(task_id)
            watch.followers += 1
        follow = Follow(self, watch, tenant, admin)
        try:
            if seed:
                self._read(watch, raise_errors=True)  # the first follower's read seeds the watch for all
                self._ensure_thread()
            elif not watch.seeded.wait(self._interval * 4 + 10):
                raise errors.Unavailable("the task could not be read; retry later")
            snap = watch.snapshot
            assert snap is not None
            if snap.failed:
                raise errors.Unavailable("the task could not be read; retry later")
            if snap.job is None or not self._tasks.visible(snap.job, tenant):  # GET /tasks/{id}: on the snapshot
                raise errors.NotFound(f"no task '{task_id}'", field="task_id")
        except BaseException:
            follow.close()
            raise
        return follow, snap

    def view(self, snap: Snapshot, tenant: str, *, admin: bool = False) -> Task:
        """`snap` as GET /tasks/{id} would show it to `tenant` (signed result and preview included)."""
        task = self._tasks.tenant_view(snap.job, tenant, admin=admin) if snap.job is not None else None
        if task is None:
            raise errors.NotFound("the task does not show to this tenant", field="task_id")
        return task.model_copy(update={"queue_position": snap.queue_position}) \
            if snap.queue_position is not None and task.status == JobStatus.QUEUED else task

    def open_streams(self) -> dict[str, int]:
        with self._lock:
            return dict(self._open)

    def _release(self, follow: Follow) -> None:
        with self._lock:
            if follow.closed:
                return
            follow.closed = True
            left = self._open.get(follow.tenant, 0) - 1
            if left > 0:
                self._open[follow.tenant] = left
            else:
                self._open.pop(follow.tenant, None)
            follow.watch.followers -= 1

    # ---- the watcher ------------------------------------------------------------------------------------

    def _read(self, watch: Watch, *, raise_errors: bool = False) -> None:
        try:
            job, position = self._tasks.snapshot(watch.task_id)
        except self._transient as exc:
            watch.failures += 1
            log.warning("progress_read_failed", task_id=watch.task_id, error=str(exc), failures=watch.failures)
            if raise_errors:
                watch.publish(None, failed=True)
                raise
            if watch.failures >= MAX_READ_FAILURES:
                watch.publish(watch.snapshot.job if watch.snapshot else None, failed=True)
            return
        watch.failures = 0
        watch.publish(job, position)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="progress-hub", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        next_at = self._clock() + self._interval
        while True:
            time.sleep(max(0.0, next_at - self._clock()))
            next_at += self._interval
            with self._lock:
                for task_id, watch in list(self._watches.items()):
                    ended = watch.snapshot is not None and (watch.snapshot.terminal or watch.snapshot.failed
                                                            or watch.snapshot.job is None)
                    if watch.followers <= 0 or ended:
                        del self._watches[task_id]
                watches = list(self._watches.values())
                if not watches:
                    self._thread = None
                    return
            for watch in watches:
                self._read(watch)
            if self._clock() > next_at:  # reads took longer than an interval: skip ahead, never pile up
                next_at = self._clock() + self._interval
