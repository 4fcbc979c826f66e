"""Content policy per tenant, as a service: which policy a tenant runs under (its own from the keys file, else the
deployment's `SOUL_CONTENT_POLICY`), the prompt-side screen (the tenant's and the deployment's blocked terms on the
normalized cue, before any job exists: 422 `content_policy`, no GPU spent), and the media views every delivery path
uses (`functions/services/links.py`), so the image answer, task views, listings, static redirects, webhooks and the
event stream all apply the asking tenant's policy the same way (the rules: functions/core/content_policy.py)."""

from __future__ import annotations

from functions.core import content_policy as rules
from functions.core.content_policy import Viewer
from functions.core.errors import ContentRefused
from functions.core.normalize import CueError, normalize_cue
from functions.core.tenants import KeyRing
from functions.settings import FunctionsSettings
from schemas.safety import ContentPolicy


class ContentPolicies:
    def __init__(self, ring: KeyRing | None, settings: FunctionsSettings):
        self._ring = ring
        self._default = ContentPolicy(settings.content_policy)
        self._deployment_terms = rules.normalize_terms([t for t in settings.blocked_terms.split(",") if t.strip()])
        self._terms: dict[str, tuple[str, ...]] = {}

    def policy(self, tenant: str) -> ContentPolicy:
        own = self._ring.content_policy(tenant) if self._ring is not None else None
        return ContentPolicy(own) if own else self._default

    def viewer(self, tenant: str, *, admin: bool = False) -> Viewer:
        return Viewer(policy=self.policy(tenant), admin=admin)

    def blocked_terms(self, tenant: str) -> tuple[str, ...]:
        terms = self._terms.get(tenant)
        if terms is None:  # normalized once per tenant and process (the ring is fixed at start-up)
            own = self._ring.blocked_terms(tenant) if self._ring is not None else ()
            terms = self._terms[tenant] = tuple(dict.fromkeys(self._deployment_terms + rules.normalize_terms(own)))
        return terms

    def blocks(self, tenant: str, cue: str) -> bool:
        """Whether the tenant blocks a term of `cue` (as sent or stored; it is normalized here)."""
        try:
            normalized = normalize_cue(cue)
        except CueError:
            return False
        return rules.blocked_term(normalized, self.blocked_terms(tenant)) is not None

    def screen(self, tenant: str, normalized_cue: str) -> None:
        """Refuse a cue that contains one of the tenant's blocked terms (422), naming the policy, not the term."""
        term = rules.blocked_term(normalized_cue, self.blocked_terms(tenant))
        if term is not None:
            raise ContentRefused(
                f"the cue contains a term this tenant's content policy blocks (blocked terms, policy "
                f"'{self.policy(tenant)}'); nothing was queued", field="cue")
