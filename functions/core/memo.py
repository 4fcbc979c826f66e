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


class RefreshingMemo:
    """A per-process memo for facts read on every request that may be a few seconds stale (a soul's style and
    identity): an entry is served as is for `ttl_s`; after that, for up to `stale_s` more, it is still served
    while one background thread reads it again (single flight per key), so steady traffic never waits on the
    read; an entry older than that, or none, is read on the request. A failed background read is dropped (the
    next request past `ttl_s` tries again) and a failed read on the request raises as it would uncached."""

    def __init__(self, ttl_s: float, *, stale_s: float = 60.0, max_entries: int = 4096, clock=time.monotonic):
        self._ttl_s, self._stale_s, self._max, self._clock = ttl_s, stale_s, max_entries, clock
        self._entries: dict[object, tuple[float, object]] = {}  # key -> (read at, value)
        self._refreshing: set[object] = set()
        self._drops = 0  # a background read begun before a drop must not put back what was dropped
        self._lock = threading.Lock()

    def get(self, key: object, load) -> object:
        now = self._clock()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None:
            age = now - hit[0]
            if age < self._ttl_s:
                return hit[1]
            if age < self._ttl_s + self._stale_s:
                self._refresh(key, load)
                return hit[1]
        value = load()
        self.put(key, value)
        return value

    def put(self, key: object, value: object) -> None:
        with self._lock:
            if len(self._entries) >= self._max and key not in self._entries:
                self._entries.clear()
            self._entries[key] = (self._clock(), value)

    def clear(self) -> None:
        """Forget every entry (reads in flight put nothing back)."""
        with self._lock:
            self._entries.clear()
            self._drops += 1

    def drop(self, key: object) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._drops += 1

    def _refresh(self, key: object, load) -> None:
        with self._lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)
            drops = self._drops

        def run() -> None:
            try:
                value = load()
                with self._lock:
                    if self._drops == drops:
                        self._entries[key] = (self._clock(), value)
            except Exception:  # noqa: BLE001 - stale stays served until `stale_s`; then a request reads it itself
                pass
            finally:
                with self._lock:
                    self._refreshing.discard(key)

        threading.Thread(target=run, name="memo-refresh", daemon=True).start()
