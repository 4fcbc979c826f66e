"""Standard Webhooks verification (https://www.standardwebhooks.com): the API signs each delivery with
HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}` with the tenant's `whsec_<base64>` secret and sends
`webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,<base64>`, space-separated when several).
`verify_webhook` checks one of the signatures in constant time and the timestamp's age, then returns the parsed
body; anything else raises `WebhookVerificationError`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from soul_client.errors import WebhookVerificationError

DEFAULT_TOLERANCE_S = 300  # the spec's recommended window against replays


def _secret_bytes(secret: str) -> bytes:
    raw = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        raise WebhookVerificationError("the webhook secret is not `whsec_<base64>`") from None


def sign_webhook(msg_id: str, timestamp: int, body: bytes | str, secret: str) -> str:
    """The `webhook-signature` value for a delivery (for tests and for relaying)."""
    payload = body.encode() if isinstance(body, str) else body
    mac = hmac.new(_secret_bytes(secret), f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify_webhook(headers: Mapping[str, str], body: bytes | str, secret: str, *,
                   tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> Any:
    """The delivery's JSON body once its signature and timestamp verify; `WebhookVerificationError` otherwise.
    `body` must be the raw bytes as received (a re-serialized JSON does not verify)."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get(k) for k in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance_s:g} s from now")
    expected = sign_webhook(msg_id, timestamp, body, secret).split(",", 1)[1]
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            payload = body.decode() if isinstance(body, bytes) else body
            try:
                return json.loads(payload)
            except ValueError:
                raise WebhookVerificationError("the webhook body is not JSON") from None
    raise WebhookVerificationError("no webhook-signature matches")
