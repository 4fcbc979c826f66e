"""A background flusher for what request paths add up in memory (dedup-hit counters, usage rollups): the request
adds to a buffer and returns; a daemon thread writes the buffer every few seconds, so no request ever waits on
(or fails with) a statistic's Firestore write. A failed flush is logged and its counts stay for the next one."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Flusher:
    """Calls `flush` every `interval_s` on a daemon thread started by the first `start()` (cheap to call again)."""

    def __init__(self, flush: Callable[[], None], interval_s: float, name: str):
        self._flush = flush
        self._interval_s = interval_s
        self._name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last flush (tests, shutdown)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._flush_logged()
        self._flush_logged()

    def _flush_logged(self) -> None:
        try:
            self._flush()
        except Exception:  # noqa: BLE001 - a statistic: kept in memory and tried again next interval
            log.warning("flush_failed", flusher=self._name, exc_info=True)
