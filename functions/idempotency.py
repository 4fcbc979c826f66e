"""Idempotency keys for POSTs that create work: the same key with the same request replays the first answer;
the same key with a different request is a 422. Keys are scoped to the caller (their API key, if any) and kept
for a bounded time (`idempotency/{id}` documents carry `expires_at` for a Firestore TTL policy)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from google.api_core import exceptions as gexc
from google.cloud import firestore

from functions.errors import IdempotencyMismatch, InvalidInput
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
    def __init__(self, db: firestore.Client, ttl: timedelta, timeout: float = 10.0):
        self._db = db
        self._ttl = ttl
        self._deadline = deadline(timeout)

    def run_once(self, key: str, scope: str, fingerprint: str, run: Callable[[], StoredReply]) -> StoredReply:
        if not _KEY_RE.match(key):
            raise InvalidInput("Idempotency-Key must be 1-200 printable ASCII characters", field="Idempotency-Key")
        ref = self._db.collection(names.IDEMPOTENCY).document(
            hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        )
        stored = self._replay(ref, fingerprint)
        if stored is not None:
            return stored
        reply = run()
        if reply.status >= 500:
            return reply  # not recorded: the client may retry with the same key
        now = utcnow()
        try:
            ref.create({"fingerprint": fingerprint, "status": reply.status, "body": reply.body, "created_at": now,
                        "expires_at": now + self._ttl}, **self._deadline)
        except gexc.Conflict:
            # A concurrent request with the same key won; answer as it did (the work itself is deduplicated).
            return self._replay(ref, fingerprint) or reply
        return reply

    def _replay(self, ref, fingerprint: str) -> StoredReply | None:
        snap = ref.get(**self._deadline)
        if not snap.exists:
            return None
        doc = snap.to_dict()
        if doc["expires_at"] <= utcnow():
            ref.delete(**self._deadline)
            return None
        if doc["fingerprint"] != fingerprint:
            raise IdempotencyMismatch("this Idempotency-Key was used with a different request", field="Idempotency-Key")
        return StoredReply(status=int(doc["status"]), body=doc["body"])
