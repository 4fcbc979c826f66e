"""While a job runs: renew its Firestore lease and the Pub/Sub ack deadline, and pick up cancel requests.
A lost lease or a cancel is signalled to the work, which stops at its next step."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from gpu_runner.errors import LeaseLost
from gpu_runner.stages.progress import JobSignals

log = structlog.get_logger(__name__)


class Heartbeat:
    def __init__(
        self,
        *,
        renew_lease: Callable[[], bool],
        extend_ack: Callable[[], None],
        signals: JobSignals,
        interval_s: float,
    ):
        self._renew_lease = renew_lease
        self._extend_ack = extend_ack
        self._signals = signals
        self._interval = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Idempotent; returns once no renewal is in flight."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self.beat()

    def beat(self) -> None:
        try:
            if self._renew_lease():
                self._signals.cancel.set()
        except LeaseLost:
            self._signals.lease_lost.set()
            return
        except Exception:  # noqa: BLE001 - a missed beat is retried next interval; the lease has slack
            log.warning("lease_renewal_failed", exc_info=True)
        try:
            self._extend_ack()
        except Exception:  # noqa: BLE001 - redelivery is harmless: the job lease decides who works
            log.warning("ack_extension_failed", exc_info=True)
