"""Idempotency records: `idempotency/{sha256(scope, key)}`: a reservation (`pending`) made before the work, then
the stored answer; `expires_at` for the TTL policy. The protocol is functions/services/idempotency.py's."""

from __future__ import annotations

from collections.abc import Mapping

from schemas import names
from soul_common import firestore as fs

Version = fs.Snapshot


class IdempotencyRecords:
    def __init__(self, db: fs.Db):
        self._db = db

    @staticmethod
    def _ref(record_id: str) -> fs.DocRef:
        return fs.doc(names.IDEMPOTENCY, record_id)

    def read(self, record_id: str) -> tuple[dict | None, Version]:
        snap = self._db.get(self._ref(record_id))
        return snap.data, snap

    def reserve(self, record_id: str, data: Mapping) -> bool:
        """Exactly one request wins a key."""
        return self._db.create(self._ref(record_id), data)

    def save(self, record_id: str, data: Mapping) -> None:
        self._db.set(self._ref(record_id), data)

    def release(self, record_id: str) -> None:
        self._db.delete(self._ref(record_id))

    def release_if_unchanged(self, version: Version) -> bool:
        """Delete the record only as `version` saw it (an expired one; never a fresh reservation)."""
        return self._db.delete(version.ref, if_unchanged=version)
