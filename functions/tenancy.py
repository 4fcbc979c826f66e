"""Who is asking, for the push features (webhook records, delivery listings, the warm pool): the principal the
router authenticated (functions/auth.py) and the tenant's webhook signing secret: the tenant's `webhook_secret`
from SOUL_API_KEYS_FILE, else SOUL_WEBHOOK_SECRET (a single-tenant deployment)."""

from __future__ import annotations

import flask

from functions.auth import DEFAULT_TENANT, KeyRing, Principal
from functions.settings import FunctionsSettings

INGEST_TENANT = DEFAULT_TENANT  # requests that arrive on soul-requests come from services of this deployment


def principal_of_request() -> Principal | None:
    """The authenticated caller of the request being served (set by the router), if any."""
    if not flask.has_request_context():
        return None
    return flask.g.get("soul_principal")


def tenant_of_request() -> str:
    """The tenant of the request being served."""
    principal = principal_of_request()
    return principal.tenant if principal is not None else DEFAULT_TENANT


def webhook_secret(settings: FunctionsSettings, tenant: str, keys: KeyRing | None = None) -> str:
    """The `whsec_...` secret deliveries to this tenant's webhooks are signed with; "" when none is set."""
    if keys is not None:
        own = keys.tenant_webhook_secret(tenant)
        if own:
            return own
    return settings.webhook_secret.get_secret_value().strip()


def may_warm() -> bool:
    """Who may call POST /image/warm: admin keys (batch jobs get an admin key of their tenant)."""
    principal = principal_of_request()
    return principal is not None and principal.is_admin
