"""Cursor paging over a query: a page plus one document to tell whether there is more; the cursor is the last
document's id, checked before use (ids Firestore reserves are never a cursor we gave out)."""

from __future__ import annotations

import re

from functions.core.errors import InvalidInput
from soul_common import firestore as fs

_RESERVED_ID = re.compile(r"^__.*__$|^\.\.?$")


def page(db: fs.Db, query: fs.Query, anchor: fs.DocRef | None, page_size: int) -> tuple[list[fs.Snapshot], str | None]:
    """One page of `query` after the document `anchor` (the cursor's document; None: the first page)."""
    if anchor is not None:
        if _RESERVED_ID.match(anchor.id):
            raise InvalidInput("cursor does not name a position in this list", field="cursor")
        snap = db.get(anchor)
        if not snap.exists:
            raise InvalidInput("cursor does not name a position in this list", field="cursor")
        query = query.start_after(snap)
    snaps = db.stream(query.limit(page_size + 1))
    cursor = snaps[page_size - 1].id if len(snaps) > page_size else None
    return snaps[:page_size], cursor
