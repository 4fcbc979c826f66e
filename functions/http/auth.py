"""Reading a request's credentials: the API key a caller sent (`X-API-Key` or a Bearer token) becomes its
`Principal` through the key ring (functions/core/tenants.py); behind Cloud Run invoker IAM the verified ID token's
identity does."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from functions.core import errors
from functions.core.tenants import DEFAULT_TENANT, KeyRing, Principal, Role, key_digest


def presented_key(headers: Mapping[str, str]) -> str:
    """The key sent as `X-API-Key` (first: behind invoker IAM `Authorization` carries the ID token) or Bearer."""
    key = headers.get("X-API-Key", "").strip()
    header = headers.get("Authorization", "")
    if not key and header[:7].lower() == "bearer ":
        key = header[7:].strip()
    return key


def authenticate_key(ring: KeyRing, headers: Mapping[str, str]) -> Principal:
    key = presented_key(headers)
    if not key:
        raise errors.Unauthenticated("send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    principal = ring.principal(key)
    if principal is None:
        raise errors.PermissionDenied("the API key is not valid for this service")
    return principal


def platform_principal(headers: Mapping[str, str], admins: frozenset[str]) -> Principal:
    """Behind Cloud Run invoker IAM the platform verified the ID token before the request arrived; its claims
    name the caller. Without a readable token every caller shares one scope (documented in docs/SECURITY.md)."""
    identity = _token_identity(headers.get("Authorization", ""))
    if identity is None:
        return Principal(tenant=DEFAULT_TENANT, role="client", key_id="platform", scope=f"{DEFAULT_TENANT}:platform")
    digest = key_digest(identity)[:16]
    role: Role = "admin" if identity in admins else "client"
    return Principal(tenant=DEFAULT_TENANT, role=role, key_id=digest, scope=f"{DEFAULT_TENANT}:id-{digest}")


def _token_identity(header: str) -> str | None:
    if header[:7].lower() != "bearer ":
        return None
    parts = header[7:].strip().split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(claims, dict):
        return None
    identity = claims.get("email") or claims.get("sub")
    return identity if isinstance(identity, str) and identity else None

