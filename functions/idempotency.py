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

from google.api_core import exceptions as gexc
from google.cloud import firestore

from functions.errors import Conflict, IdempotencyMismatch, InvalidInput
from functions.store import deadline
from schemas import names
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

    def __init__(self, db: firestore.Client, ttl: timedelta, timeout: float = 10.0, *,
                 pending_s: float = 60.0, wait_s: float = 5.0):
        self._db = db
        self._ttl = ttl
        self._deadline = deadline(timeout)
        self._pending = timedelta(seconds=pending_s)  # a reservation older than this was abandoned (crash)
        self._wait_s = wait_s

    def run_once(self, key: str, scope: str, fingerprint: str, run: Callable[[], StoredReply]) -> StoredReply:
        if not _KEY_RE.match(key):
            raise InvalidInput("Idempotency-Key must be 1-200 printable ASCII characters", field="Idempotency-Key")
        ref = self._db.collection(names.IDEMPOTENCY).document(
            hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        )
        waited = 0.0
        while True:
            stored = self._replay(ref, fingerprint)
            if isinstance(stored, StoredReply):
                return stored
            if stored is _ABSENT and self._reserve(ref, fingerprint):
                break
            if waited >= self._wait_s:
                raise Conflict("a request with this Idempotency-Key is still in progress; retry shortly",
                               field="Idempotency-Key")
            time.sleep(0.1)
            waited += 0.1
        try:
            reply = run()
        except BaseException:
            ref.delete(**self._deadline)  # nothing was answered: the client may retry with the same key
            raise
        if reply.status >= 500:
            ref.delete(**self._deadline)
            return reply
        now = utcnow()
        ref.set({"fingerprint": fingerprint, "status": reply.status, "body": reply.body, "pending": False,
                 "created_at": now, "expires_at": now + self._ttl}, **self._deadline)
        return reply

    def _reserve(self, ref, fingerprint: str) -> bool:
        now = utcnow()
        try:
            ref.create({"fingerprint": fingerprint, "pending": True, "created_at": now,
                        "expires_at": now + self._pending}, **self._deadline)
        except gexc.Conflict:
            return False
        return True

    def _replay(self, ref, fingerprint: str):
        """The stored answer; `_PENDING` while the first request works; `_ABSENT` when the key is free."""
        snap = ref.get(**self._deadline)
        if not snap.exists:
            return _ABSENT
        doc = snap.to_dict()
        if doc["expires_at"] <= utcnow():
            try:  # only the expired record: never a fresh reservation made meanwhile
                ref.delete(option=self._db.write_option(last_update_time=snap.update_time), **self._deadline)
            except gexc.FailedPrecondition:
                return _PENDING
            return _ABSENT
        if doc["fingerprint"] != fingerprint:
            raise IdempotencyMismatch("this Idempotency-Key was used with a different request", field="Idempotency-Key")
        if doc.get("pending"):
            return _PENDING
        return StoredReply(status=int(doc["status"]), body=doc["body"])


_ABSENT = object()
_PENDING = object()
