"""A soul's identity (`identities/{soul_id}`: reference images and LoRA adapter), read with the version a
conditional write checks. Written by admins only; the read-modify-write loop is the identity service's
(functions/services/identity.py)."""

from __future__ import annotations

from schemas import names
from schemas._base import firestore_dict
from schemas.identity import IdentityDoc
from soul_common import firestore as fs

Version = fs.Snapshot  # opaque to callers: what `write` checks


class IdentityStore:
    def __init__(self, db: fs.Db):
        self._db = db

    def read(self, soul_id: str) -> tuple[IdentityDoc | None, Version]:
        snap = self._db.get(fs.doc(names.IDENTITIES, soul_id))
        return (IdentityDoc.model_validate(snap.data) if snap.data else None), snap

    def write(self, doc: IdentityDoc, version: Version) -> bool:
        """Store `doc` only if the document is as `version` saw it (absent: create); False on a lost race."""
        ref = fs.doc(names.IDENTITIES, doc.soul_id)
        data = firestore_dict(doc)
        if not version.exists:
            return self._db.create(ref, data)
        try:
            return self._db.update(ref, data, if_unchanged=version)
        except fs.Missing:
            return False
