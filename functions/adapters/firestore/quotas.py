"""Per-tenant quota state: token-bucket shards `tenants/{t}/rate/{shard}` (`tat`, updated conditionally) and
counters `tenants/{t}/counters/{name}` (`n`, server-side increments), each with `expires_at` for a TTL policy.
The arithmetic and the decisions are functions/core/quota_policy.py's and functions/services/quotas.py's."""

from __future__ import annotations

from datetime import datetime

from schemas import names
from soul_common import firestore as fs
from soul_common import reservations

Version = fs.Snapshot


class QuotaStore:
    def __init__(self, db: fs.Db):
        self._db = db

    # token bucket
    @staticmethod
    def _shard(tenant: str, shard: int) -> fs.DocRef:
        return fs.doc(names.TENANTS, tenant, "rate", str(shard))

    def bucket(self, tenant: str, shard: int) -> tuple[float | None, Version]:
        """The shard's theoretical arrival time (None for a fresh bucket) and its version."""
        snap = self._db.get(self._shard(tenant, shard))
        return (snap.data or {}).get("tat"), snap

    def spend(self, version: Version, tat: float, expires_at: datetime) -> bool:
        """Store the new `tat` only if nobody spent from the shard since `version`; False on a lost race."""
        doc = {"tat": tat, "expires_at": expires_at}
        if not version.exists:
            return self._db.create(version.ref, doc)
        try:
            return self._db.update(version.ref, doc, if_unchanged=version)
        except fs.Missing:
            return False

    # counters
    @staticmethod
    def _counter(tenant: str, name: str) -> fs.DocRef:
        return reservations.counter_ref(tenant, name)  # the runner settles GPU reservations on these too

    def add(self, tenant: str, name: str, by: int, expires_at: datetime | None = None,
            group: str | None = None) -> int | None:
        """Add `by` to a counter on the server; its value afterwards when the write reports it. `group` names the
        counter a shard belongs to (`total` sums a group's shards)."""
        update: dict = {"n": fs.increment(by)}
        if expires_at is not None:
            update["expires_at"] = expires_at
        if group is not None:
            update["group"] = group
        written = self._db.set(self._counter(tenant, name), update, merge=True)
        return int(written.transforms[0]) if written.transforms else None

    def value(self, tenant: str, name: str) -> int:
        return int((self._db.get(self._counter(tenant, name)).data or {}).get("n", 0))

    def total(self, tenant: str, group: str) -> int:
        """The sum of a sharded counter's shards (those written with `group`): one aggregation, billed as one read
        however many shards there are."""
        return int(self._db.sum(fs.collection(names.TENANTS, tenant, reservations.COUNTERS)
                                .where("group", "==", group), "n"))
