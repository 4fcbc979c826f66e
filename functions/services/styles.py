"""Style profiles: stored overrides of the shipped catalog, written last-write-wins on `updated_at`.

The write is lock-free: read the document, decide with `lww.incoming_wins`, then write only if the document is
unchanged since the read (create() when absent, an update-time precondition when present); a lost race re-reads
and decides again. Read-then-write transactions would livelock under contention on the Firestore emulator.
A delete is a tombstone with its own `updated_at`, so an older write arriving late cannot resurrect a style, and a
delete older than the stored write loses (409). An `updated_at` further in the future than the allowed clock
skew is refused: it would otherwise win against every later write.

The request path reads a soul's style through `current`, kept per instance (every image request needs it; a dedup
hit reads no style document) and read again in the background every `cache_s`: a write on this instance shows at
once, one on another instance within about `cache_s`. `GET /style/{soul}` (`get`) always reads the stored document."""

from __future__ import annotations

from datetime import datetime, timedelta

from functions.adapters.firestore.styles import StyleStore
from functions.core import keys
from functions.core.catalog import shipped_souls
from functions.core.errors import Conflict, InvalidInput, NotFound, Unavailable
from functions.core.lww import incoming_wins
from functions.core.memo import RefreshingMemo
from schemas._base import utcnow
from schemas.api import StyleDeleted, StyleOut, StylePage, StyleUpsert
from schemas.documents import Style

_RACE_RETRIES = 8


class StyleService:
    def __init__(self, store: StyleStore, skew_s: float = 300.0, cache_s: float = 0.0):
        self._store = store
        self._skew = timedelta(seconds=skew_s)
        self._cache = RefreshingMemo(cache_s) if cache_s > 0 else None

    def current(self, soul_id: str) -> StyleOut:
        """The style image requests key and render with: stored wins over the catalog (else NotFound), kept on
        this instance (functions/core/memo.py `RefreshingMemo`: read again in the background after `cache_s`);
        unknown souls are not kept, each is read again."""
        if self._cache is None:
            return self.get(soul_id)
        return self._cache.get(soul_id, lambda: self.get(soul_id))  # type: ignore[return-value]

    def _stamp(self, updated_at: datetime | None) -> datetime:
        now = utcnow()
        if updated_at is None:
            return now
        if updated_at.tzinfo is None:
            raise InvalidInput("updated_at needs a time zone (e.g. 2026-01-01T12:00:00Z)", field="updated_at")
        if updated_at - now > self._skew:
            raise InvalidInput(
                f"updated_at is more than {self._skew.total_seconds():g} s in the future; send the current time",
                field="updated_at",
            )
        return updated_at

    def put(self, upsert: StyleUpsert) -> StyleOut:
        updated_at = self._stamp(upsert.updated_at)
        incoming = {
            "soul_id": upsert.soul_id,
            "display_name": upsert.display_name,
            "style": upsert.style.model_dump(mode="json"),
            "deleted": False,
            "updated_at": updated_at,
        }
        stored = self._write_lww(upsert.soul_id, incoming)
        if stored.get("deleted"):
            raise Conflict(
                f"the style of '{upsert.soul_id}' was deleted at {stored['updated_at'].isoformat()}, after this "
                "write's updated_at; send a newer updated_at to create it again",
                field="updated_at",
            )
        return self._view(upsert.soul_id, stored)

    def delete(self, soul_id: str, updated_at: datetime | None = None) -> StyleDeleted:
        stamp = self._stamp(updated_at)
        stored, _ = self._store.read(soul_id)
        if stored is None or stored.get("deleted"):
            raise NotFound(f"no stored style for soul '{soul_id}'", field="soul_id")
        tombstone = {"soul_id": soul_id, "display_name": "", "style": None, "deleted": True, "updated_at": stamp}
        stored = self._write_lww(soul_id, tombstone)
        if not stored.get("deleted"):
            raise Conflict(
                f"the style of '{soul_id}' was written at {stored['updated_at'].isoformat()}, after this delete's "
                "updated_at; the newer write stays",
                field="updated_at",
            )
        return StyleDeleted(soul_id=soul_id, updated_at=stored["updated_at"])

    def _write_lww(self, soul_id: str, incoming: dict) -> dict:
        """Store `incoming` unless a newer write is stored; return what is stored afterwards."""
        if self._cache is not None:
            self._cache.drop(soul_id)  # this instance's next request reads what is stored now
        for _ in range(_RACE_RETRIES):
            stored, version = self._store.read(soul_id)
            if not incoming_wins(
                stored and stored.get("updated_at"), _content(stored), incoming["updated_at"], _content(incoming)
            ):
                return stored
            if self._store.write(soul_id, incoming, version):
                return incoming
            # someone wrote in between: decide again against their write
        raise Unavailable(f"style of '{soul_id}' is under heavy concurrent writes; retry")

    def get(self, soul_id: str) -> StyleOut:
        stored, _ = self._store.read(soul_id)
        return self._view(soul_id, stored)

    def list(self, page_size: int, cursor: str | None) -> StylePage:
        stored = self._store.all()
        soul_ids = sorted(set(shipped_souls()) | set(stored))
        if cursor:
            soul_ids = [s for s in soul_ids if s > cursor]
        items = []
        for soul_id in soul_ids:
            try:
                items.append(self._view(soul_id, stored.get(soul_id)))
            except NotFound:
                continue
            if len(items) == page_size:
                break
        more = bool(items) and any(s > items[-1].soul_id for s in soul_ids)
        return StylePage(items=items, next_cursor=items[-1].soul_id if more else None)

    def _view(self, soul_id: str, stored: dict | None) -> StyleOut:
        if stored and not stored.get("deleted"):
            style = Style.model_validate(stored["style"])
            return StyleOut(
                soul_id=soul_id, display_name=stored.get("display_name", ""), style=style,
                fingerprint=keys.style_fingerprint(style), source="stored", updated_at=stored["updated_at"],
            )
        shipped = shipped_souls().get(soul_id)
        if shipped is None:
            raise NotFound(f"unknown soul '{soul_id}'", field="soul_id")
        return StyleOut(
            soul_id=soul_id, display_name=shipped.display_name, style=shipped.style,
            fingerprint=keys.style_fingerprint(shipped.style), source="catalog", updated_at=None,
        )


def _content(doc: dict | None) -> dict | None:
    if doc is None:
        return None
    return {k: v for k, v in doc.items() if k != "updated_at"}
