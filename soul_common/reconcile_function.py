"""The `reconcile` HTTP function's core: built once per process on the first call (never at import time), then
one reconciler pass per call. Cloud Scheduler calls it every minute (infra/); `make run` calls it the same way.
The entry point itself lives in functions/main.py, next to the other functions-framework targets."""

from __future__ import annotations

import threading

from google.cloud import firestore, pubsub_v1

from soul_common.events import EventPublisher
from soul_common.firestore import Db
from soul_common.logs import configure_logging
from soul_common.reconciler import ReconcileReport, Reconciler
from soul_common.settings import ReconcileSettings

_lock = threading.Lock()
_reconciler: Reconciler | None = None
# One pass at a time per instance: a slow pass and the next scheduled call must not act on the same snapshot.
_pass_lock = threading.Lock()


def _get() -> Reconciler:
    global _reconciler
    if _reconciler is None:
        with _lock:
            if _reconciler is None:
                settings = ReconcileSettings()
                configure_logging(settings.log_level, component="reconcile")
                events = EventPublisher(pubsub_v1.PublisherClient(), settings.project_id)
                _reconciler = Reconciler(Db(firestore.Client(project=settings.project_id)), events, settings.policy())
    return _reconciler


def run_pass() -> ReconcileReport | None:
    """One pass, or None when a pass is already running in this instance."""
    reconciler = _get()
    if not _pass_lock.acquire(blocking=False):
        return None
    try:
        return reconciler.sweep()
    finally:
        _pass_lock.release()
