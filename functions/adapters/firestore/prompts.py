"""The dedup index and what users saw: `prompts/{pk}`, `variants/{variant_id}`, `users/{user}/seen/{variant_id}`,
`users/{user}/seen_by_pk/{pk}` (the ids of that key's variants the user saw, in one document) and
`users/{user}.recent_places` (selfies).

Reads per request stay constant (issue 17): a request reads `prompts/{pk}` (its `variant_ids`, extended by the
runner in the batch that writes each variant) and the user's `seen_by_pk/{pk}` in one round trip, then only the
variant it chose; never every variant nor a seen entry per variant."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from functions.adapters.firestore.paging import page
from schemas import names
from schemas._base import firestore_dict
from schemas.documents import PromptDoc, SeenDoc, VariantDoc
from soul_common import firestore as fs


@dataclass(frozen=True)
class PromptIndex:
    """`prompts/{pk}` as the request path reads it, with the asking user's seen ids of that key."""

    variant_ids: tuple[str, ...]
    variant_indices: frozenset[int]
    seen: frozenset[str]
    exists: bool = True

    @property
    def unseen(self) -> list[str]:
        return [v for v in self.variant_ids if v not in self.seen]


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
        """Write the index entry's description; called once per key, by the creator of its first job (never per
        request). A merge, so a variant list the runner wrote first is kept."""
        data = firestore_dict(doc)
        data.pop("variant_ids", None)  # the runner's to extend
        self._db.set(fs.doc(names.PROMPTS, doc.pk), data, merge=True)

    def index_of(self, pk: str, user_id: str) -> PromptIndex:
        """The key's variants as the index holds them and those `user_id` saw: two documents, one round trip."""
        prompt, seen = self._db.get_all([fs.doc(names.PROMPTS, pk), self._seen_index(user_id, pk)])
        data = prompt.data or {}
        return PromptIndex(variant_ids=tuple(data.get("variant_ids", [])),
                           variant_indices=frozenset(int(i) for i in data.get("variant_indices", [])),
                           seen=frozenset((seen.data or {}).get("variant_ids", [])), exists=prompt.exists)

    # seen
    def _seen(self, user_id: str, variant_id: str) -> fs.DocRef:
        return fs.doc(names.USERS, user_id, names.SEEN, variant_id)

    def _seen_index(self, user_id: str, pk: str) -> fs.DocRef:
        return fs.doc(names.USERS, user_id, names.SEEN_BY_PK, pk)

    def seen_among(self, user_id: str, variant_ids: Sequence[str]) -> set[str]:
        snaps = self._db.get_all([self._seen(user_id, v) for v in variant_ids])
        return {snap.id for snap in snaps if snap.exists}

    def mark_seen(self, user_id: str, doc: SeenDoc) -> SeenDoc:
        """Idempotent: the first mark wins and keeps its time."""
        ref = self._seen(user_id, doc.variant_id)
        created = self._db.create(ref, firestore_dict(doc))
        # The per-key index (a user's own document: one write per mark). A union, so a repeated mark or a mark
        # that lost its create above still leaves the index whole.
        self._db.set(self._seen_index(user_id, doc.pk),
                     {"variant_ids": fs.array_union([doc.variant_id]), "updated_at": doc.seen_at}, merge=True)
        if created:
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
