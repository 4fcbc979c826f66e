"""Moved to `soul_common.events` (the reconcile function publishes the same messages); kept as an alias."""

from soul_common.events import EVENT_TYPES, PUBLISH_TIMEOUT_S, EventPublisher

__all__ = ["EVENT_TYPES", "PUBLISH_TIMEOUT_S", "EventPublisher"]
