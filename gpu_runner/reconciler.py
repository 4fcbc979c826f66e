"""Moved to `soul_common.reconciler`: the runner and the scheduled `reconcile` function run the same code."""

from soul_common.reconciler import ReconcilePolicy, Reconciler, decide, needs_publish

__all__ = ["ReconcilePolicy", "Reconciler", "decide", "needs_publish"]
