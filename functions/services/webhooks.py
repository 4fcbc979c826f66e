"""Webhook records: a requester's `webhook` on a work-creating request becomes its own record under the job
(`jobs/{job_id}/webhooks/{webhook_id}`, with the tenant, URL and event filter), never a field of the job: one
job serves every requester of the same work (dedup), and each keeps its own webhook. This module registers
them (after a syntactic SSRF check; the full check runs at delivery, after DNS), lists a tenant's deliveries
for `GET /tasks/{id}`, and attaches them to the jobs that requests created or joined (the HTTP router vets a
webhook before the work: functions/http/routes.py). Delivery itself is functions/services/webhook_delivery.py."""

from __future__ import annotations

import hashlib

import structlog

from functions.adapters.firestore.jobs import JobStore
from functions.adapters.firestore.webhooks import WebhookStore
from functions.adapters.pubsub import Publisher
from functions.core import errors, ssrf
from functions.core.tenants import KeyRing, webhook_secret
from functions.services.content import ContentPolicies
from functions.settings import FunctionsSettings
from schemas import names
from schemas._base import utcnow
from schemas.jobs import TERMINAL_STATUSES, JobDoc, JobEvent, JobStatus
from schemas.safety import ContentPolicy
from schemas.push import (
    DEFAULT_WEBHOOK_EVENTS,
    Delivery,
    WebhookDoc,
    WebhookEvent,
    WebhookOptions,
)

log = structlog.get_logger(__name__)

COMPLETION_EVENTS = {
    JobStatus.SUCCEEDED: names.EVENT_JOB_SUCCEEDED,
    JobStatus.FAILED: names.EVENT_JOB_FAILED,
    JobStatus.CANCELED: names.EVENT_JOB_CANCELED,
}


def webhook_id(tenant: str, url: str) -> str:
    """The same requester asking twice with the same URL keeps one record (its filters merge)."""
    return hashlib.sha256(f"{tenant}\n{url}".encode()).hexdigest()[:32]


class WebhookRegistry:
    def __init__(self, hooks: WebhookStore, jobs: JobStore, publisher: Publisher, settings: FunctionsSettings,
                 keys: KeyRing | None = None):
        self._hooks = hooks
        self._jobs = jobs
        self._publisher = publisher
        self._settings = settings
        self._keys = keys

    def content_policy(self, tenant: str) -> ContentPolicy:
        """The tenant's content policy: which completion body its webhooks get (functions/core/content_policy.py)."""
        return ContentPolicies(self._keys, self._settings).policy(tenant)

    def secret(self, tenant: str) -> str:
        """The tenant's `whsec_...` signing secret ("" when it has none; only the default tenant may use
        SOUL_WEBHOOK_SECRET: one shared secret would let each tenant forge deliveries to the others)."""
        return webhook_secret(self._keys, tenant, self._settings.webhook_secret.get_secret_value())

    def check(self, url: str, tenant: str) -> None:
        """Before any work is created: a 400 for a URL that may never be called or a tenant that cannot sign."""
        try:
            ssrf.check_syntax(url, allow_loopback=self._settings.webhook_allow_loopback,
                              loopback_ports=self._settings.loopback_ports)
        except ssrf.UnsafeTarget as exc:
            raise errors.InvalidInput(f"webhook: {exc}", field="webhook") from None
        if not self.secret(tenant):
            raise errors.InvalidInput(
                "webhook: this deployment has no webhook signing secret (SOUL_WEBHOOK_SECRET)" if tenant == "default"
                else f"webhook: tenant '{tenant}' has no webhook signing secret: give it its own webhook_secret in "
                "the keys file (secrets are per tenant; SOUL_WEBHOOK_SECRET signs only the default tenant's)",
                field="webhook",
            )

    def register(self, job_id: str, tenant: str, url: str, events: list[WebhookEvent] | None) -> WebhookDoc:
        """Record the target (a 409 past the cap on this tenant's targets for this job: the work itself stands)."""
        wanted = [WebhookEvent(e) for e in (events or DEFAULT_WEBHOOK_EVENTS)]
        doc = WebhookDoc(webhook_id=webhook_id(tenant, url), job_id=job_id, tenant=tenant, url=url,
                         events=wanted, created_at=utcnow())
        cap = self._settings.webhook_targets_per_tenant_per_job
        if not self._hooks.claim_slot(job_id, tenant, doc.webhook_id, cap):
            raise errors.Conflict(
                f"webhook: task '{job_id}' already has {cap} webhooks of this tenant (the limit, "
                "SOUL_WEBHOOK_TARGETS_PER_TENANT_PER_JOB); the task goes on, this URL is not registered; follow "
                f"it with GET /tasks/{job_id} or an existing webhook", field="webhook",
            )
        self._hooks.register(doc, [e.value for e in wanted])
        job = self._jobs.job(job_id)  # read after the record exists: a completion before it is caught up below
        live = [e.value for e in wanted if e is not WebhookEvent.COMPLETED]
        if live and job is not None:
            # The runner publishes start/progress events only for jobs whose document asks for them (`notify`),
            # so soul-events carries them only where a webhook waits; written only when not asked yet.
            self._jobs.want_events(job_id, live, already=job.notify)
        log.info("webhook_registered", job_id=job_id, webhook_id=doc.webhook_id, events=[e.value for e in wanted])
        self._catch_up(job)
        return doc

    def _catch_up(self, job: JobDoc | None) -> None:
        """A job that finished before this record existed already had its completion event: announce it again
        (same CloudEvent id, so other consumers drop it as a duplicate; targets already served are skipped)."""
        if job is None or JobStatus(job.status) not in TERMINAL_STATUSES:
            return
        event = JobEvent(job_id=job.job_id, type=job.type, status=job.status, soul_id=job.soul_id,
                         result=job.result, error=job.error, occurred_at=job.finished_at or utcnow())
        self._publisher.publish_event(event_type=COMPLETION_EVENTS[JobStatus(job.status)], event_id=job.job_id,
                                      data=event.model_dump_json().encode(),
                                      time_iso=event.occurred_at.isoformat())

    def targets(self, job_id: str, event: WebhookEvent) -> list[WebhookDoc]:
        return [d for d in self._hooks.hooks(job_id) if event in d.events and d.withdrawn_at is None]

    def deliveries(self, job_id: str, tenant: str) -> list[Delivery]:
        """Every delivery to this tenant's webhooks of the job, oldest event first."""
        listed: list[Delivery] = []
        for hook in self._hooks.hooks(job_id, tenant):
            for doc in self._hooks.deliveries(job_id, hook.webhook_id):
                listed.append(Delivery(webhook_id=hook.webhook_id, url=hook.url, event=doc.event,
                                       event_type=doc.event_type, status=doc.status, attempts=doc.attempts))
        return sorted(listed, key=lambda d: d.attempts[0].at if d.attempts else utcnow())

    def attach(self, options: WebhookOptions, answer: object, tenant: str) -> None:
        """Register the request's webhook on the job its answer names (an answer served at once has no job)."""
        task_id = getattr(answer, "task_id", None)
        if options.webhook and task_id:
            self.register(task_id, tenant, options.webhook, options.webhook_events_filter)
