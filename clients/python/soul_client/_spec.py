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
    body: type | None = None
    # status -> model class, "<redirect>" (the Location is the answer) or "<stream>" (server-sent events)
    responses: Mapping[int, Any] = field(default_factory=dict)
    idempotency_key: bool = False  # honours Idempotency-Key: safe to retry with the same key
    public: bool = False

    @property
    def idempotent(self) -> bool:
        """Safe to send twice: reads and deletes by HTTP's rules, POSTs only with an idempotency key."""
        return self.method in ("GET", "HEAD", "DELETE") or self.idempotency_key
