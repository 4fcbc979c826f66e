"""Moved to `soul_common.logs` (the runner and the reconcile function log the same way); kept as an alias."""

from soul_common.logs import configure_logging

__all__ = ["configure_logging"]
