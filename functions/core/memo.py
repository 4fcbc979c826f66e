"""A small per-process memo whose entries expire: for facts that change slowly and are read on every request
(the warm pool's demand per key, who was recorded as an asker), so the common case costs no extra read."""

from __future__ import annotations

import threading
import time


class TtlMemo:
    """A per-process memo whose entries expire after `ttl_s`; bounded by dropping everything when full."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000, clock=time.monotonic):
        self._ttl_s, self._max, self._clock = ttl_s, max_entries, clock
        self._entries: dict[object, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get(self, key: object, default: object = None) -> object:
        with self._lock:
            hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] > self._clock() else default

    def put(self, key: object, value: object) -> None:
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (self._clock() + self._ttl_s, value)

    def drop(self, key: object) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
