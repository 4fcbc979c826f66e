"""The shape of one API operation, as the generated table (`_operations.py`) describes it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    path: str  # with {name} placeholders
    path_params: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    # A model class (JSON), "<json>" (JSON without a model), "<bytes>" (an upload of `body_media`), or None.
    body: Any = None
    body_media: str = "application/json"
    # status -> a model class, "<json>", "<redirect>" (the Location is the answer), "<stream>" (server-sent
    # events), "<bytes>" (the body as it is) or "<empty>" (no body)
    responses: Mapping[int, Any] = field(default_factory=dict)
    idempotency_key: bool = False  # honours Idempotency-Key: safe to retry with the same key
    public: bool = False

    @property
    def idempotent(self) -> bool:
        """Safe to send twice: reads and deletes by HTTP's rules, POSTs only with an idempotency key."""
        return self.method in ("GET", "HEAD", "DELETE") or self.idempotency_key
