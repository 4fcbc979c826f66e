"""Progress of the running job: throttled writes (about one per second per job), an ETA from the measured pace,
and the place where cancellation and lost leases interrupt the work, between two denoising steps.

With `background=True` the writes go through a writer thread (latest value wins, at most one write per
`min_gap_s`: a burst of stage changes is one write, and none sooner than `doc_gap_s` after the runner's last write of
the job's document, `last_doc_write`: its claim, variant and finish are never crowded by ticks into one second), so
a Firestore round trip never stalls the device between two steps; `close()` stops and joins it before the job is finished, and a write refused
for a lost lease signals the work (which stops at its next step)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from gpu_runner.errors import JobCanceled, LeaseLost, TransientError


class JobSignals:
    """Set by the heartbeat thread, read by the work between steps."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.lease_lost = threading.Event()
        self.shutdown = threading.Event()  # the runner is stopping and the grace budget is spent

    def check(self) -> None:
        if self.shutdown.is_set():
            raise TransientError("runner shutting down; job released for another runner")
        if self.lease_lost.is_set():
            raise LeaseLost("lease lost while working")
        if self.cancel.is_set():
            raise JobCanceled("cancel requested")


class ProgressReporter:
    def __init__(
        self,
        write: Callable[[float, str, float | None], None],
        signals: JobSignals,
        min_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        background: bool = False,
        min_gap_s: float = 0.5,
        last_doc_write: Callable[[], float | None] | None = None,
        doc_gap_s: float = 0.0,
    ):
        self._write = write
        self._signals = signals
        self._min_interval = min_interval_s
        self._clock = clock
        self._started = clock()
        self._last_write = float("-inf")
        self._closed = False
        self._background = background
        self._min_gap = min_gap_s  # writer thread: stage changes closer than this are coalesced (latest wins)
        self._last_doc_write = last_doc_write  # when (on `clock`) the job's document was last written by anyone here
        self._doc_gap = doc_gap_s
        self._pending: tuple | None = None
        self._preview = None  # the latest preview not yet written: rides on the next (throttled) write
        self._last: tuple[float, str] | None = None
        self._cond = threading.Condition()
        self._writer: threading.Thread | None = None

    def close(self) -> None:
        """No more writes from this reporter (a pending one is dropped); returns once none is in flight."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=30)

    def stage(self, name: str, fraction: float) -> None:
        """A coarse stage change (loading, uploading...): always written."""
        self._signals.check()
        self._emit(fraction, name, force=True)

    def step(self, done: int, total: int, *, stage: str, span: tuple[float, float] = (0.0, 1.0)) -> None:
        """A fine-grained step inside a stage that covers `span` of the whole job."""
        self._signals.check()
        low, high = span
        self._emit(low + (high - low) * (done / max(total, 1)), stage, force=False)

    def preview(self, preview) -> None:
        """A new preview of the forming image: written with the next progress write, never more often (the writes
        stay about one per second per job however often previews come). `write` then gets it as a 4th argument."""
        with self._cond:
            self._preview = preview
        if self._last is not None:
            self._emit(*self._last, force=False)

    def _emit(self, fraction: float, stage: str, *, force: bool) -> None:
        if self._closed:
            return
        self._last = (fraction, stage)
        now = self._clock()
        if not force and now - self._last_write < self._min_interval:
            return
        elapsed = now - self._started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0.01 else None
        self._last_write = now
        value = (fraction, stage, None if eta is None else round(eta, 2))
        with self._cond:
            if self._preview is not None:
                value, self._preview = (*value, self._preview), None
        if not self._background:
            self._write(*value)
            return
        with self._cond:
            if self._pending is not None and len(self._pending) == 4 and len(value) == 3:
                value = (*value, self._pending[3])  # a newer tick keeps the unwritten preview
            self._pending = value
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="progress", daemon=True)
                self._writer.start()
            self._cond.notify_all()

    def _quiet_for(self) -> float:
        """Seconds until the job's document may take an advisory write (0: now)."""
        last = self._last_doc_write() if self._last_doc_write is not None else None
        return 0.0 if last is None else max(0.0, last + self._doc_gap - self._clock())

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._pending is not None)
                while not self._closed and (wait := self._quiet_for()) > 0:
                    self._cond.wait_for(lambda: self._closed, timeout=wait)  # newer values replace the pending one
                if self._closed:
                    return
                value, self._pending = self._pending, None
            try:
                self._write(*value)
            except LeaseLost:
                self._signals.lease_lost.set()
                return
            except Exception:  # noqa: BLE001 - advisory: the next tick writes again
                pass
            # Pace the job document: what arrives within the gap is coalesced into one write (latest wins).
            with self._cond:
                self._cond.wait_for(lambda: self._closed, timeout=self._min_gap)
