"""Who is asking, for the push features (webhook records, delivery listings): the tenant of the request and
its webhook signing secret. A seam: the tenants work of issue 8 owns the real answers (`tenant_webhook_secret`
from SOUL_API_KEYS_FILE); until it is wired in, a request's tenant is its caller scope set by the router (a
hash of its API key, or "anonymous") and every tenant signs with SOUL_WEBHOOK_SECRET."""

from __future__ import annotations

import flask

from functions.settings import FunctionsSettings

DEFAULT_TENANT = "anonymous"
INGEST_TENANT = "ingest"  # requests that arrive on soul-requests, from services of this project


def tenant_of_request() -> str:
    """The tenant of the request being served (set by the router after authentication)."""
    if not flask.has_request_context():
        return DEFAULT_TENANT
    return str(flask.g.get("soul_tenant", DEFAULT_TENANT))


def webhook_secret(settings: FunctionsSettings, tenant: str) -> str:
    """The `whsec_...` secret deliveries to this tenant's webhooks are signed with; "" when none is set."""
    return settings.webhook_secret.get_secret_value().strip()


def may_prerender(tenant: str, pk: str) -> bool:
    """The quota hook of the warm pool: may this tenant's demand cost a pre-render of `pk` now? Issue 8's
    GPU-work quota plugs in here; until then the per-key daily cap (SOUL_WARM_POOL_KEY_CAP_PER_DAY) bounds it."""
    return True


def may_warm(tenant: str) -> bool:
    """Who may call POST /image/warm: issue 8's `admin` role (and batch keys) once roles exist; until then every
    authenticated caller of this single-tenant deployment."""
    return True
