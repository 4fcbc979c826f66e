"""Cursor paging over a query: a page plus one document to tell whether there is more; the cursor is the last
document's id, checked before use (ids Firestore reserves are never a cursor we gave out) and checked to be a
document of the caller's own results: a cursor naming a document outside them (another tenant's job) answers
exactly as one naming no document, so a cursor is never an existence oracle."""

from __future__ import annotations

import re
from collections.abc import Callable

from functions.core.errors import InvalidInput
from soul_common import firestore as fs

_RESERVED_ID = re.compile(r"^__.*__$|^\.\.?$")


def page(db: fs.Db, query: fs.Query, anchor: fs.DocRef | None, page_size: int,
         member: Callable[[dict], bool] | None = None) -> tuple[list[fs.Snapshot], str | None]:
    """One page of `query` after the document `anchor` (the cursor's document; None: the first page); `member`
    says whether a document's data is among the query's results (the query's own filters, as a predicate)."""
    if anchor is not None:
        if _RESERVED_ID.match(anchor.id):
            raise InvalidInput("cursor does not name a position in this list", field="cursor")
        snap = db.get(anchor)
        if not snap.exists or (member is not None and not member(snap.data or {})):
            raise InvalidInput("cursor does not name a position in this list", field="cursor")
        query = query.start_after(snap)
    snaps = db.stream(query.limit(page_size + 1))
    cursor = snaps[page_size - 1].id if len(snaps) > page_size else None
    return snaps[:page_size], cursor
