"""The dedup index and what users saw: `prompts/{pk}`, `variants/{variant_id}`, `users/{user}/seen/{variant_id}`
and `users/{user}.recent_places` (selfies)."""

from __future__ import annotations

from collections.abc import Sequence

from functions.adapters.firestore.paging import page
from schemas import names
from schemas._base import firestore_dict
from schemas.documents import PromptDoc, SeenDoc, VariantDoc
from soul_common import firestore as fs


class PromptStore:
    def __init__(self, db: fs.Db):
        self._db = db

    # prompts / variants
    def variants_of(self, pk: str) -> list[VariantDoc]:
        query = fs.collection(names.VARIANTS).where("pk", "==", pk)
        return [VariantDoc.model_validate(snap.data) for snap in self._db.stream(query)]

    def variant(self, variant_id: str) -> VariantDoc | None:
        snap = self._db.get(fs.doc(names.VARIANTS, variant_id))
        return VariantDoc.model_validate(snap.data) if snap.exists else None

    def variants_page(self, pk: str | None, page_size: int, cursor: str | None) -> tuple[list[VariantDoc], str | None]:
        """Variants ordered by id (ULIDs: creation order), of one pk or of all."""
        query = fs.collection(names.VARIANTS)
        if pk:
            query = query.where("pk", "==", pk)
        anchor = fs.doc(names.VARIANTS, cursor) if cursor else None
        member = (lambda data: data.get("pk") == pk) if pk else None
        snaps, after = page(self._db, query.order_by("__name__"), anchor, page_size, member)
        return [VariantDoc.model_validate(s.data) for s in snaps], after

    def prompt(self, pk: str) -> PromptDoc | None:
        snap = self._db.get(fs.doc(names.PROMPTS, pk))
        return PromptDoc.model_validate(snap.data) if snap.exists else None

    def ensure_prompt(self, doc: PromptDoc) -> None:
        """Create the index entry once; an existing one is kept (its variant list is the runner's to extend)."""
        self._db.create(fs.doc(names.PROMPTS, doc.pk), firestore_dict(doc))

    # seen
    def _seen(self, user_id: str, variant_id: str) -> fs.DocRef:
        return fs.doc(names.USERS, user_id, names.SEEN, variant_id)

    def seen_among(self, user_id: str, variant_ids: Sequence[str]) -> set[str]:
        snaps = self._db.get_all([self._seen(user_id, v) for v in variant_ids])
        return {snap.id for snap in snaps if snap.exists}

    def mark_seen(self, user_id: str, doc: SeenDoc) -> SeenDoc:
        """Idempotent: the first mark wins and keeps its time."""
        ref = self._seen(user_id, doc.variant_id)
        if self._db.create(ref, firestore_dict(doc)):
            return doc
        return SeenDoc.model_validate(self._db.get(ref).data)

    def seen_page(self, user_id: str, page_size: int, cursor: str | None) -> tuple[list[SeenDoc], str | None]:
        query = fs.collection(names.USERS, user_id, names.SEEN).order_by("__name__")
        anchor = self._seen(user_id, cursor) if cursor else None
        snaps, after = page(self._db, query, anchor, page_size)
        return [SeenDoc.model_validate(s.data) for s in snaps], after

    # users
    def recent_places(self, user_id: str) -> list[str]:
        snap = self._db.get(fs.doc(names.USERS, user_id))
        return list((snap.data or {}).get("recent_places", []))

    def set_recent_places(self, user_id: str, places: list[str]) -> None:
        self._db.set(fs.doc(names.USERS, user_id), {"recent_places": places}, merge=True)
