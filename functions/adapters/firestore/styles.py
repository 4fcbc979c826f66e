"""Stored style profiles: `styles/{soul_id}` (a style, or a tombstone), read with the version a conditional write
checks: the last-write-wins loop is the style service's (functions/services/styles.py)."""

from __future__ import annotations

from collections.abc import Mapping

from schemas import names
from soul_common import firestore as fs

Version = fs.Snapshot  # opaque to callers: what `write` checks


class StyleStore:
    def __init__(self, db: fs.Db):
        self._db = db

    def read(self, soul_id: str) -> tuple[dict | None, Version]:
        snap = self._db.get(fs.doc(names.STYLES, soul_id))
        return snap.data, snap

    def write(self, soul_id: str, data: Mapping, version: Version) -> bool:
        """Store `data` only if the document is as `version` saw it (absent: create); False on a lost race."""
        ref = fs.doc(names.STYLES, soul_id)
        if not version.exists:
            return self._db.create(ref, data)
        try:
            return self._db.update(ref, data, if_unchanged=version)
        except fs.Missing:
            return False

    def all(self) -> dict[str, dict]:
        return {snap.id: snap.data for snap in self._db.stream(fs.collection(names.STYLES))}
