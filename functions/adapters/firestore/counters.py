"""Sharded counters: `counters/{name}/shards/{n}`, each shard a `count` field.

Why: one Firestore document sustains about one write per second; a counter bumped on every cache-hit request (the
dedup hits) would be that bottleneck and abort requests under contention. Each increment goes to one of N shard
documents picked at random as a server-side increment (no read, no transaction, never lost to a race), and a read
sums the shards in one aggregation query. N bounds the write rate (~N/s sustained); reads cost one query."""

from __future__ import annotations

import random

from schemas import names
from soul_common import firestore as fs

DEFAULT_SHARDS = 16


class ShardedCounter:
    def __init__(self, db: fs.Db, name: str, *, shards: int = DEFAULT_SHARDS):
        if shards < 1:
            raise ValueError(f"a counter needs at least one shard, got {shards!r}")
        self._db = db
        self._name = name
        self._count = shards

    def increment(self, by: int = 1) -> None:
        shard = fs.doc(names.COUNTERS, self._name, names.COUNTER_SHARDS, str(random.randrange(self._count)))
        self._db.set(shard, {"count": fs.increment(by)}, merge=True)

    def total(self) -> int:
        query = fs.collection(names.COUNTERS, self._name, names.COUNTER_SHARDS)
        return int(self._db.sum(query, "count"))
