"""Webhook records: a requester's `webhook` on a work-creating request becomes its own record under the job
(`jobs/{job_id}/webhooks/{webhook_id}`, with the tenant, URL and event filter), never a field of the job: one
job serves every requester of the same work (dedup), and each keeps its own webhook. This module registers
them (after a syntactic SSRF check; the full check runs at delivery, after DNS), lists a tenant's deliveries
for `GET /tasks/{id}`, and decorates the work-creating handlers. Delivery itself is functions/webhook_delivery.py."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

import structlog
from google.cloud import firestore

from functions import errors, ssrf, tenancy
from functions.auth import KeyRing
from functions.publish import Publisher
from functions.settings import FunctionsSettings
from functions.store import Store
from schemas import names
from schemas._base import firestore_dict, utcnow
from schemas.jobs import TERMINAL_STATUSES, JobEvent, JobStatus
from schemas.push import (
    DEFAULT_WEBHOOK_EVENTS,
    Delivery,
    DeliveryDoc,
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
    def __init__(self, store: Store, publisher: Publisher, settings: FunctionsSettings, keys: KeyRing | None = None):
        self._store = store
        self._publisher = publisher
        self._settings = settings
        self._keys = keys

    def secret(self, tenant: str) -> str:
        """The tenant's `whsec_...` signing secret ("" when it has none)."""
        return tenancy.webhook_secret(self._settings, tenant, self._keys)

    def _hooks(self, job_id: str):
        return self._store.jobs().document(job_id).collection(names.WEBHOOKS)

    def check(self, url: str, tenant: str) -> None:
        """Before any work is created: a 400 for a URL that may never be called or a tenant that cannot sign."""
        try:
            ssrf.check_syntax(url, allow_loopback=self._settings.webhook_allow_loopback)
        except ssrf.UnsafeTarget as exc:
            raise errors.InvalidInput(f"webhook: {exc}", field="webhook") from None
        if not self.secret(tenant):
            raise errors.InvalidInput(
                "webhook: this deployment has no webhook signing secret (SOUL_WEBHOOK_SECRET or the tenant's "
                "webhook_secret)", field="webhook",
            )

    def register(self, job_id: str, tenant: str, url: str, events: list[WebhookEvent] | None) -> WebhookDoc:
        wanted = [WebhookEvent(e) for e in (events or DEFAULT_WEBHOOK_EVENTS)]
        doc = WebhookDoc(webhook_id=webhook_id(tenant, url), job_id=job_id, tenant=tenant, url=url,
                         events=wanted, created_at=utcnow())
        data = firestore_dict(doc)
        data["events"] = firestore.ArrayUnion([e.value for e in wanted])
        self._hooks(job_id).document(doc.webhook_id).set(data, merge=True, **self._store.deadline)
        live = [e.value for e in wanted if e is not WebhookEvent.COMPLETED]
        if live:
            # The runner publishes start/progress events only for jobs whose document asks for them (`notify`),
            # so soul-events carries them only where a webhook waits.
            self._store.jobs().document(job_id).update({"notify": firestore.ArrayUnion(live)},
                                                       **self._store.deadline)
        log.info("webhook_registered", job_id=job_id, webhook_id=doc.webhook_id, events=[e.value for e in wanted])
        self._catch_up(job_id)
        return doc

    def _catch_up(self, job_id: str) -> None:
        """A job that finished before this record existed already had its completion event: announce it again
        (same CloudEvent id, so other consumers drop it as a duplicate; targets already served are skipped)."""
        job = self._store.job(job_id)
        if job is None or JobStatus(job.status) not in TERMINAL_STATUSES:
            return
        event = JobEvent(job_id=job.job_id, type=job.type, status=job.status, soul_id=job.soul_id,
                         result=job.result, error=job.error, occurred_at=job.finished_at or utcnow())
        self._publisher.publish_event(event_type=COMPLETION_EVENTS[JobStatus(job.status)], event_id=job.job_id,
                                      data=event.model_dump_json().encode())

    def targets(self, job_id: str, event: WebhookEvent) -> list[WebhookDoc]:
        docs = [WebhookDoc.model_validate(s.to_dict()) for s in self._hooks(job_id).stream(**self._store.deadline)]
        return [d for d in docs if event in d.events]

    def deliveries(self, job_id: str, tenant: str) -> list[Delivery]:
        """Every delivery to this tenant's webhooks of the job, oldest event first."""
        listed: list[Delivery] = []
        hooks = self._hooks(job_id).where(filter=firestore.FieldFilter("tenant", "==", tenant))
        for snap in hooks.stream(**self._store.deadline):
            hook = WebhookDoc.model_validate(snap.to_dict())
            for d in snap.reference.collection(names.DELIVERIES).stream(**self._store.deadline):
                doc = DeliveryDoc.model_validate(d.to_dict())
                listed.append(Delivery(webhook_id=hook.webhook_id, url=hook.url, event=doc.event,
                                       event_type=doc.event_type, status=doc.status, attempts=doc.attempts))
        return sorted(listed, key=lambda d: d.attempts[0].at if d.attempts else utcnow())

    def attach(self, options: WebhookOptions, answer: object, tenant: str) -> None:
        """Register the request's webhook on the job its answer names (an answer served at once has no job)."""
        task_id = getattr(answer, "task_id", None)
        if options.webhook and task_id:
            self.register(task_id, tenant, options.webhook, options.webhook_events_filter)


def _options(call) -> WebhookOptions | None:
    for part in (call.body, call.query):
        if isinstance(part, WebhookOptions) and part.webhook:
            return part
    return None


def registers_webhook(handler: Callable) -> Callable:
    """Wrap a work-creating handler: vet the webhook before the work, register it on the job after."""

    @functools.wraps(handler)
    def wrapped(svc, call):
        options = _options(call)
        tenant = tenancy.tenant_of_request()
        if options is not None:
            svc.webhooks.check(options.webhook, tenant)
        reply = handler(svc, call)
        if options is not None and isinstance(reply, tuple):
            svc.webhooks.attach(options, reply[1], tenant)
        return reply

    return wrapped
