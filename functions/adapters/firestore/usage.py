"""The usage rollups as the functions read and add to them (`usage/{tenant}/days/{day}-{shard}`,
`usage_totals/{shard}`; the documents and their sharding are soul_common/rollups.py's, shared with the runner,
which adds each finished job). This instance adds dedup hits, buffered (one write per tenant and day every few
seconds), on its own shard."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from soul_common import firestore as fs
from soul_common import rollups


class UsageStore:
    def __init__(self, db: fs.Db, *, writer: str | None = None, flush_s: float = 5.0):
        self._db = db
        self._buffer = rollups.DedupBuffer(db, writer or f"functions-{uuid.uuid4().hex[:12]}", flush_s=flush_s)

    def add_dedup_hit(self, tenant: str, when: datetime) -> None:
        self._buffer.add(tenant, when)

    def flush(self) -> None:
        self._buffer.flush()

    def gpu_seconds_on(self, tenant: str, day: str) -> float:
        return rollups.gpu_seconds_on(self._db, tenant, day)

    def days(self, tenant: str, first: date, last: date) -> dict[str, dict[str, float]]:
        return rollups.days(self._db, tenant, first, last)

    def totals(self) -> dict[str, float]:
        return rollups.totals(self._db)
