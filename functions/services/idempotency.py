"""Idempotency keys for POSTs that create work: the key is reserved before the work, the same key with the same
request replays the first answer; the same key with a different request is a 422. Keys are scoped to the caller
(tenant and API key, or verified identity) and kept for a bounded time (`idempotency/{id}` documents carry
`expires_at` for a Firestore TTL policy)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from functions.adapters.firestore.idempotency import IdempotencyRecords
from functions.core.errors import Conflict, IdempotencyMismatch, InvalidInput
from schemas._base import utcnow

_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces


@dataclass(frozen=True)
class StoredReply:
    status: int
    body: str  # JSON, exactly as first answered


def request_fingerprint(method: str, path: str, query: dict, body: object) -> str:
    canonical = json.dumps({"m": method, "p": path, "q": query, "b": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyStore:
    """Stripe-style: the key is reserved (a create() that exactly one request wins) before the work starts.
    Concurrent requests with the same key never start a second piece of work: with the same request they wait
    briefly for the first answer and replay it (or get a 409 while it is still being made), with a different
    request they get the 422. A failed attempt (an error, or a 5xx answer) releases the key for a retry."""

    def __init__(self, records: IdempotencyRecords, ttl: timedelta, *, pending_s: float = 60.0, wait_s: float = 5.0):
        self._records = records
        self._ttl = ttl
        self._pending = timedelta(seconds=pending_s)  # a reservation older than this was abandoned (crash)
        self._wait_s = wait_s

    def run_once(self, key: str, scope: str, fingerprint: str, run: Callable[[], StoredReply]) -> StoredReply:
        if not _KEY_RE.match(key):
            raise InvalidInput("Idempotency-Key must be 1-200 printable ASCII characters", field="Idempotency-Key")
        record = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        waited = 0.0
        while True:
            stored = self._replay(record, fingerprint)
            if isinstance(stored, StoredReply):
                return stored
            if stored is _ABSENT and self._reserve(record, fingerprint):
                break
            if waited >= self._wait_s:
                raise Conflict("a request with this Idempotency-Key is still in progress; retry shortly",
                               field="Idempotency-Key")
            time.sleep(0.1)
            waited += 0.1
        try:
            reply = run()
        except BaseException:
            self._records.release(record)  # nothing was answered: the client may retry with the same key
            raise
        if reply.status >= 500:
            self._records.release(record)
            return reply
        now = utcnow()
        self._records.save(record, {"fingerprint": fingerprint, "status": reply.status, "body": reply.body,
                                    "pending": False, "created_at": now, "expires_at": now + self._ttl})
        return reply

    def _reserve(self, record: str, fingerprint: str) -> bool:
        now = utcnow()
        return self._records.reserve(record, {"fingerprint": fingerprint, "pending": True, "created_at": now,
                                              "expires_at": now + self._pending})

    def _replay(self, record: str, fingerprint: str):
        """The stored answer; `_PENDING` while the first request works; `_ABSENT` when the key is free."""
        doc, version = self._records.read(record)
        if doc is None:
            return _ABSENT
        if doc["expires_at"] <= utcnow():
            # only the expired record: never a fresh reservation made meanwhile
            return _ABSENT if self._records.release_if_unchanged(version) else _PENDING
        if doc["fingerprint"] != fingerprint:
            raise IdempotencyMismatch("this Idempotency-Key was used with a different request", field="Idempotency-Key")
        if doc.get("pending"):
            return _PENDING
        return StoredReply(status=int(doc["status"]), body=doc["body"])


_ABSENT = object()
_PENDING = object()
