"""Sharded counters in Firestore: `counters/{name}/shards/{n}`, each shard a `count` field.

Why: one Firestore document sustains about one write per second; a counter bumped on every cache-hit request (the
dedup hits) would be that bottleneck and abort requests under contention. Each increment goes to one of N shard
documents picked at random as a server-side `Increment` (no read, no transaction, never lost to a race), and a read
sums the shards in one aggregation query. N bounds the write rate (~N/s sustained); reads cost one query."""

from __future__ import annotations

import random

from google.cloud import firestore

from schemas import names

DEFAULT_SHARDS = 16


class ShardedCounter:
    def __init__(self, db: firestore.Client, name: str, *, shards: int = DEFAULT_SHARDS, deadline: dict | None = None):
        if shards < 1:
            raise ValueError(f"a counter needs at least one shard, got {shards!r}")
        self._shards = db.collection(names.COUNTERS).document(name).collection(names.COUNTER_SHARDS)
        self._count = shards
        self._deadline = deadline or {}

    def increment(self, by: int = 1) -> None:
        shard = self._shards.document(str(random.randrange(self._count)))
        shard.set({"count": firestore.Increment(by)}, merge=True, **self._deadline)

    def total(self) -> int:
        result = self._shards.sum("count", alias="total").get(**self._deadline)
        value = result[0][0].value
        return int(value or 0)
