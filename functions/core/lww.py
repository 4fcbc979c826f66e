"""Last-write-wins on `updated_at`: the pure rule behind style writes. An older write never replaces a newer
one; equal timestamps are broken by content, so every replica picks the same winner whatever the arrival order."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime


def _tiebreak(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def incoming_wins(
    stored_at: datetime | None, stored: dict | None, incoming_at: datetime, incoming: dict
) -> bool:
    """True when the incoming write should replace what is stored (None = nothing stored)."""
    if stored_at is None or stored is None:
        return True
    if incoming_at != stored_at:
        return incoming_at > stored_at
    return _tiebreak(incoming) > _tiebreak(stored)
