"""Tenants and who may do what: API keys belong to a tenant and carry a role. This module owns the key ring
(loaded once from `SOUL_API_KEYS_FILE` and/or `SOUL_API_KEYS` at start-up), the `Principal` a request runs as,
how end users are namespaced per tenant, each tenant's quota overrides and webhook signing secret, and refuses a
configuration that would silently weaken auth (a key in two tenants, an unknown role, a bad file). Reading a
request's credentials is the HTTP layer's (functions/http/auth.py).

Only SHA-256 hashes of keys are kept in memory and compared (in constant time); a file may list `key_sha256`
so the plain key never touches the deployment at all. `python -m functions.keys_admin` mints a key and prints
the entry to paste into the file."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from functions.core.quota_policy import QuotaOverrides
from schemas.safety import ContentPolicy

Role = Literal["client", "admin"]
DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(ValueError):
    """The auth configuration is unusable: the deployable must not start with it."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: passed explicitly from the router to the handlers and the services."""

    tenant: str
    role: Role
    key_id: str  # a short hash of the key (or identity): safe to log
    scope: str  # idempotency scope: tenant + key (or verified identity)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# Local development with auth off entirely: one tenant, allowed everything.
LOCAL = Principal(tenant=DEFAULT_TENANT, role="admin", key_id="anonymous", scope=f"{DEFAULT_TENANT}:anonymous")
# Requests that arrive on soul-requests (ingest) come from services of this deployment: the publisher is
# authorized by Pub/Sub IAM, as a client of the default tenant.
INGEST = Principal(tenant=DEFAULT_TENANT, role="client", key_id="ingest", scope=f"{DEFAULT_TENANT}:ingest")
INGEST_TENANT = INGEST.tenant


class KeyEntry(BaseModel):
    """One entry of the keys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = Field(pattern=TENANT_PATTERN)
    role: Role = "client"
    key: str | None = Field(default=None, min_length=1, max_length=512)
    key_sha256: str | None = None
    quota: QuotaOverrides = QuotaOverrides()
    webhook_secret: str | None = Field(default=None, pattern=r"^whsec_[A-Za-z0-9_+/=-]{16,}$")
    # Content policy (functions/core/content_policy.py): None = the deployment's SOUL_CONTENT_POLICY (default flag);
    # blocked terms refuse a cue (422) before any job exists, added to the deployment's SOUL_BLOCKED_TERMS.
    content_policy: ContentPolicy | None = None
    blocked_terms: list[str] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _one_key(self) -> KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of 'key' and 'key_sha256'")
        if self.key_sha256 is not None and not _SHA256.match(self.key_sha256):
            raise ValueError("key_sha256 must be 64 lowercase hex digits")
        return self

    @property
    def digest(self) -> str:
        return self.key_sha256 or key_digest(self.key or "")


def scoped_user(tenant: str, user_id: str) -> str:
    """An end user's id in storage: tenant A's `user123` is not tenant B's. The default tenant keeps the bare id
    (so a single-tenant deployment's seen lists survive the upgrade); others get `tenant~user`. '~' is in
    neither id pattern, so the mapping stays one-to-one."""
    return user_id if tenant == DEFAULT_TENANT else f"{tenant}~{user_id}"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Tenant:
    name: str
    quota: QuotaOverrides
    webhook_secret: str | None
    content_policy: ContentPolicy | None = None
    blocked_terms: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyRing:
    """Key hashes -> (tenant, role), and each tenant's quota overrides and webhook secret."""

    keys: Mapping[str, tuple[str, Role]] = field(default_factory=dict)
    tenants: Mapping[str, Tenant] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def principal(self, key: str) -> Principal | None:
        digest = key_digest(key)
        match = None
        for known, owner in self.keys.items():  # every entry compared, in constant time each
            if hmac.compare_digest(digest, known):
                match = owner
        if match is None:
            return None
        tenant, role = match
        return Principal(tenant=tenant, role=role, key_id=digest[:16], scope=f"{tenant}:{digest[:16]}")

    def tenant_webhook_secret(self, tenant: str) -> str | None:
        known = self.tenants.get(tenant)
        return known.webhook_secret if known else None

    def quota_overrides(self, tenant: str) -> QuotaOverrides:
        known = self.tenants.get(tenant)
        return known.quota if known else QuotaOverrides()

    def content_policy(self, tenant: str) -> ContentPolicy | None:
        """The tenant's own content policy from the keys file; None = the deployment's default."""
        known = self.tenants.get(tenant)
        return known.content_policy if known else None

    def blocked_terms(self, tenant: str) -> tuple[str, ...]:
        known = self.tenants.get(tenant)
        return known.blocked_terms if known else ()


def build_key_ring(plain_keys: str, keys_file: str | None) -> KeyRing:
    """Plain `SOUL_API_KEYS=k1,k2` are client keys of tenant "default"; the file adds tenants and roles."""
    entries = [KeyEntry(tenant=DEFAULT_TENANT, role="client", key=k.strip())
               for k in plain_keys.split(",") if k.strip()] if plain_keys.strip() else []
    if keys_file:
        entries += _read_file(keys_file)
    keys: dict[str, tuple[str, Role]] = {}
    tenants: dict[str, Tenant] = {}
    for entry in entries:
        owner = keys.get(entry.digest)
        if owner is not None and owner[0] != entry.tenant:
            raise ConfigError(f"a key (sha256 {entry.digest[:12]}...) is listed for two tenants: "
                              f"'{owner[0]}' and '{entry.tenant}'; a key must belong to exactly one tenant")
        if owner is not None and owner[1] != entry.role:
            raise ConfigError(f"a key (sha256 {entry.digest[:12]}...) of tenant '{entry.tenant}' is listed with "
                              "two roles")
        keys[entry.digest] = (entry.tenant, entry.role)
        known = tenants.get(entry.tenant)
        policy = ContentPolicy(entry.content_policy) if entry.content_policy else None
        if known is None:
            tenants[entry.tenant] = Tenant(entry.tenant, entry.quota, entry.webhook_secret, policy,
                                           tuple(entry.blocked_terms))
            continue
        if entry.webhook_secret and known.webhook_secret and entry.webhook_secret != known.webhook_secret:
            raise ConfigError(f"tenant '{entry.tenant}' has two different webhook secrets; give one (or the same)")
        if policy and known.content_policy and policy != known.content_policy:
            raise ConfigError(f"tenant '{entry.tenant}' has two different content policies ('{known.content_policy}'"
                              f" and '{policy}'); give one (or the same)")
        merged = known.quota.model_copy(update=entry.quota.model_dump(exclude_unset=True))
        terms = known.blocked_terms + tuple(t for t in entry.blocked_terms if t not in known.blocked_terms)
        tenants[entry.tenant] = Tenant(entry.tenant, merged, known.webhook_secret or entry.webhook_secret,
                                       known.content_policy or policy, terms)
    return KeyRing(keys=keys, tenants=tenants)


def _read_file(path: str) -> list[KeyEntry]:
    """The operator's keys file (a deployment setting, never a caller's input)."""
    try:
        raw = json.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"SOUL_API_KEYS_FILE cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"SOUL_API_KEYS_FILE is not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ConfigError("SOUL_API_KEYS_FILE must hold a JSON list of {tenant, role, key|key_sha256, quota}")
    entries = []
    for index, item in enumerate(raw):
        try:
            entries.append(KeyEntry.model_validate(item))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"SOUL_API_KEYS_FILE entry {index}: {where + ': ' if where else ''}{first['msg']}") \
                from None
    if not entries:
        raise ConfigError("SOUL_API_KEYS_FILE lists no keys")
    return entries


def webhook_secret(ring: KeyRing | None, tenant: str, deployment_secret: str) -> str:
    """The `whsec_...` secret deliveries to this tenant's webhooks are signed with: the tenant's own from the keys
    file; SOUL_WEBHOOK_SECRET is the default tenant's only (plain keys, ingest, platform mode), never shared with
    the others, so no tenant can forge or verify another's deliveries. "" when the tenant has none."""
    own = ring.tenant_webhook_secret(tenant) if ring is not None else None
    if own:
        return own
    return deployment_secret.strip() if tenant == DEFAULT_TENANT else ""


def check_webhook_secrets(ring: KeyRing, deployment_secret: str) -> list[str]:
    """Start-up: two tenants with one secret (SOUL_WEBHOOK_SECRET counts as the default tenant's) could forge
    each other's deliveries: refused. Returns the tenants without a secret (their webhooks are refused)."""
    owners: dict[str, str] = {}
    named = {t.name: t.webhook_secret for t in ring.tenants.values()}
    if deployment_secret.strip() and not named.get(DEFAULT_TENANT):
        named[DEFAULT_TENANT] = deployment_secret.strip()
    for tenant, secret in sorted(named.items()):
        if secret and secret in owners:
            raise ConfigError(f"tenants '{owners[secret]}' and '{tenant}' have the same webhook secret; each tenant "
                              "needs its own (SOUL_WEBHOOK_SECRET is the default tenant's)")
        if secret:
            owners[secret] = tenant
    return sorted(t for t, secret in named.items() if not secret)
