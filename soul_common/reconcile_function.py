"""The `reconcile` HTTP function's core: built once per process on the first call (never at import time), then
one reconciler pass per call. Cloud Scheduler calls it every minute (infra/); `make run` calls it the same way.
The entry point itself lives in functions/main.py, next to the other functions-framework targets."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

from google.cloud import firestore, pubsub_v1

from soul_common.events import EventPublisher
from soul_common.firestore import Db
from soul_common.logs import configure_logging
from soul_common.reconciler import PassLease, ReconcileReport, Reconciler
from soul_common.settings import ReconcileSettings

_lock = threading.Lock()
_reconciler: Reconciler | None = None
_lease: PassLease | None = None
# One pass at a time per instance: a slow pass and the next scheduled call must not act on the same snapshot.
_pass_lock = threading.Lock()


def _get() -> tuple[Reconciler, PassLease]:
    global _reconciler, _lease
    if _reconciler is None:
        with _lock:
            if _reconciler is None:
                settings = ReconcileSettings()
                configure_logging(settings.log_level, component="reconcile")
                events = EventPublisher(pubsub_v1.PublisherClient(), settings.project_id)
                db = Db(firestore.Client(project=settings.project_id))
                # The same lease the runners take: one pass for the deployment at a time, whoever calls.
                _lease = PassLease(db, f"reconcile-fn-{uuid.uuid4().hex[:12]}",
                                   timedelta(seconds=settings.reconcile_min_interval_seconds))
                _reconciler = Reconciler(db, events, settings.policy())
    assert _lease is not None
    return _reconciler, _lease


def run_pass() -> ReconcileReport | None:
    """One pass, or None when a pass is already running (in this instance, or anywhere: the lease is held)."""
    reconciler, lease = _get()
    if not _pass_lock.acquire(blocking=False):
        return None
    try:
        return reconciler.run_leased(lease)
    finally:
        _pass_lock.release()
