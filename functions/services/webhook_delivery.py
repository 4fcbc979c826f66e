"""Delivering job events to webhooks, as the `webhooks` function (a push subscription on soul-events; the same
code path locally). Each event goes to every target whose filter wants it, signed per the Standard Webhooks
spec (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`,
by the `standardwebhooks` package), and is retried per target with exponential backoff for a bounded time
(targets are delivered independently, in parallel; each attempt has one overall deadline): a target that
answered 2xx is never sent the event again, even when Pub/Sub redelivers it. Every attempt is recorded under the
webhook record and listed by `GET /tasks/{id}`.

A push of soul-events makes each target's *first* attempt only, so it ends within one attempt's deadline (per
round of parallel senders). A target to try again becomes a message on soul-webhook-retries (the event's own
message, naming the target and when it is due: `RETRY_TARGET`, `RETRY_DUE`), pushed back to this function: that
push waits until the attempt is due (at most the backoff's maximum), makes it, and schedules the next one. A
failing or hanging target therefore holds short pushes of the retry subscription, never the events' pushes nor
their push window, and other targets are told at once. The delivery document keeps when its next attempt is due
(`next_attempt_at`), so a redelivered copy of a retry message does nothing, and a retry lost to a crash before it
was published is scheduled again by the event's redelivery.

Targets are vetted after DNS resolution and the connection goes to the vetted IP (functions/core/ssrf.py,
functions/adapters/webhook_http.py); no redirect is followed, an attempt has one short overall deadline, and only
the status line of the answer is read."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from itertools import zip_longest
from datetime import datetime, timedelta

import structlog
from pydantic import ValidationError
from standardwebhooks import Webhook

from functions.adapters.firestore.webhooks import WebhookStore
from functions.adapters.webhook_http import USER_AGENT, SendFailed, post
from functions.core import ssrf
from functions.core.content_policy import Viewer, shows_previews
from functions.services.webhooks import WebhookRegistry
from functions.settings import FunctionsSettings
from schemas import names
from schemas._base import utcnow
from schemas.jobs import JobDoc
from schemas.push import DeliveryAttempt, DeliveryDoc, JobProgress, JobStarted, TaskPreview, WebhookDoc, WebhookEvent
from schemas.safety import DEFAULT_POLICY, ContentPolicy

log = structlog.get_logger(__name__)

# CloudEvent type on soul-events -> the webhook event it is.
EVENT_KINDS: Mapping[str, WebhookEvent] = {
    names.EVENT_JOB_STARTED: WebhookEvent.START,
    names.EVENT_JOB_PROGRESS: WebhookEvent.PROGRESS,
    names.EVENT_JOB_SUCCEEDED: WebhookEvent.COMPLETED,
    names.EVENT_JOB_FAILED: WebhookEvent.COMPLETED,
    names.EVENT_JOB_CANCELED: WebhookEvent.COMPLETED,
}
# Answers worth another try; any other non-2xx (a 4xx, a redirect) ends the delivery: retrying cannot fix it.
RETRY_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class RetryPolicy:
    budget_s: float
    initial_s: float
    max_s: float

    @classmethod
    def of(cls, settings: FunctionsSettings) -> RetryPolicy:
        return cls(settings.webhook_retry_budget_s, settings.webhook_backoff_initial_s, settings.webhook_backoff_max_s)

    def delay_after(self, attempts: int) -> float:
        """The wait before the next attempt once `attempts` were made: doubling from the initial, to the maximum."""
        return min(self.initial_s * 2 ** max(attempts - 1, 0), self.max_s)


# Attributes a retry message adds to the event's own: the one target it is for, and when its attempt is due.
RETRY_TARGET = "soul-webhook-id"
RETRY_DUE = "soul-due-at"


@dataclass(frozen=True)
class Retry:
    """What a soul-webhook-retries message asks: the next attempt of one target, due at `due_at`."""

    webhook_id: str
    due_at: datetime

    @classmethod
    def of(cls, attributes: Mapping[str, str]) -> Retry | None:
        """The retry a message's attributes name; None for an event; ValueError for a malformed retry."""
        if RETRY_TARGET not in attributes:
            return None
        due = datetime.fromisoformat(str(attributes.get(RETRY_DUE, "")))
        if due.tzinfo is None:
            raise ValueError("the retry's due time has no time zone")
        return cls(str(attributes[RETRY_TARGET]), due)


# Publishes a retry message: the event's data and attributes with RETRY_TARGET and RETRY_DUE.
Scheduler = Callable[[bytes, dict[str, str]], object]


@dataclass(frozen=True)
class Outgoing:
    """One event, ready to send: its delivery key under each target and the JSON body."""

    job_id: str
    event: WebhookEvent
    event_type: str
    key: str
    body: bytes
    # Completion events: the body as each content policy lets its tenants see the result (a withheld image has no
    # URL in a `withhold` tenant's body); a policy not listed gets `body`.
    bodies: Mapping[str, bytes] = field(default_factory=dict)

    def body_for(self, policy: str) -> bytes:
        return self.bodies.get(str(policy), self.body)


Sender = Callable[[ssrf.Target, Mapping[str, str], bytes, float], int]


def by_turns(pending: list[tuple[WebhookDoc, DeliveryDoc]]) -> list[tuple[WebhookDoc, DeliveryDoc]]:
    """Targets in turns of their tenants (each tenant's first, then each one's second, ...): when there are more
    targets than parallel senders, every tenant's first target is among the first to go."""
    queues: dict[str, list[tuple[WebhookDoc, DeliveryDoc]]] = {}
    for item in pending:
        queues.setdefault(item[0].tenant, []).append(item)
    turns = zip_longest(*queues.values())
    return [item for turn in turns for item in turn if item is not None]


def signed_headers(secret: str, message_id: str, body: bytes, now: datetime) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id=message_id, timestamp=now, data=body.decode())
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


class Deliverer:
    """Sends one event to its targets and records every attempt. `sleep` and `sender` are injectable."""

    def __init__(self, store: WebhookStore, registry: WebhookRegistry, settings: FunctionsSettings, *,
                 schedule: Callable[[str, datetime], None], sender: Sender = post,
                 resolver: ssrf.Resolver = ssrf.system_resolver, sleep: Callable[[float], None] = time.sleep):
        self._store = store
        self._schedule_retry = schedule  # (webhook_id, due_at): publish that target's next attempt
        self._registry = registry
        self._settings = settings
        self._policy = RetryPolicy.of(settings)
        self._sender = sender
        self._resolver = resolver
        self._sleep = sleep

    def _open(self, out: Outgoing, hook: WebhookDoc) -> DeliveryDoc:
        message_id = "msg_" + hashlib.sha256(f"{out.job_id}\n{hook.webhook_id}\n{out.key}".encode()).hexdigest()[:24]
        fresh = DeliveryDoc(key=out.key, message_id=message_id, event=out.event, event_type=out.event_type)
        return self._store.open_delivery(out.job_id, hook.webhook_id, fresh)

    def deliver(self, out: Outgoing, retry: Retry | None = None) -> dict[str, str]:
        """Without `retry` (a soul-events push): the first attempt of every target that wants the event and was
        never tried, all in parallel. With it (a soul-webhook-retries push): the attempt of that one target, once
        due. {webhook_id: status after this push}; "pending" is a target whose next attempt is scheduled. Each
        target is delivered on its own, so a slow or hanging target, whoever's it is, delays no other target's
        delivery by more than the time to start a thread."""
        pending: list[tuple[WebhookDoc, DeliveryDoc]] = []
        final: dict[str, str] = {}
        for hook in self._registry.targets(out.job_id, out.event):
            if retry is not None and hook.webhook_id != retry.webhook_id:
                continue
            doc = self._open(out, hook)
            if doc.status == "pending" and self._out_of_time(doc):
                # A redelivery (the function crashed or timed out mid-retries): the bound is from the first try.
                self._finish(out, hook, "failed")
                doc = doc.model_copy(update={"status": "failed"})
            final[hook.webhook_id] = doc.status
            if doc.status != "pending":
                continue
            if retry is None and doc.first_attempt_at is not None:
                # Tried before: its retries are scheduled; unless a crash lost the schedule, then it is made now.
                if doc.next_attempt_at is None:
                    self._schedule(out, hook, doc)
                continue
            if retry is not None and doc.next_attempt_at is not None and doc.next_attempt_at != retry.due_at:
                continue  # a stale copy of a retry message (Pub/Sub delivers at least once): a later one is due
            pending.append((hook, doc))
        if not pending:
            return final
        if retry is not None:
            wait = (retry.due_at - utcnow()).total_seconds()
            if wait > 0:
                self._sleep(min(wait, self._policy.max_s))
        workers = min(len(pending), self._settings.webhook_parallel_targets)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook") as pool:
            futures = {pool.submit(self._deliver_one, out, hook, doc): hook for hook, doc in by_turns(pending)}
            for future in as_completed(futures):
                final[futures[future].webhook_id] = future.result()  # Firestore failures propagate: redelivery
        return final

    def _deliver_one(self, out: Outgoing, hook: WebhookDoc, doc: DeliveryDoc) -> str:
        """One attempt; when it may be retried, the next one is scheduled within the retry budget."""
        status, doc = self._attempt(out, hook, doc)
        if status != "pending":
            return status
        delay = self._policy.delay_after(len(doc.attempts))
        assert doc.first_attempt_at is not None
        if (utcnow() - doc.first_attempt_at).total_seconds() + delay > self._policy.budget_s:
            self._finish(out, hook, "failed")
            log.warning("webhook_gave_up", job_id=out.job_id, webhook_id=hook.webhook_id, event_type=out.event_type,
                        attempts=len(doc.attempts))
            return "failed"
        self._schedule(out, hook, doc, delay)
        return "pending"

    def _schedule(self, out: Outgoing, hook: WebhookDoc, doc: DeliveryDoc, delay: float | None = None) -> None:
        """Publish the target's next attempt, then note when it is due (a crash between the two leaves it
        unnoted: the event's redelivery schedules it again, and the copy that arrives first is the one made)."""
        due = utcnow() + timedelta(seconds=self._policy.delay_after(len(doc.attempts)) if delay is None else delay)
        self._schedule_retry(hook.webhook_id, due)
        self._store.schedule_attempt(out.job_id, hook.webhook_id, out.key, due)
        log.info("webhook_retry_scheduled", job_id=out.job_id, webhook_id=hook.webhook_id,
                 event_type=out.event_type, due_at=due.isoformat())

    def _out_of_time(self, doc: DeliveryDoc) -> bool:
        started = doc.first_attempt_at
        return started is not None and (utcnow() - started).total_seconds() > self._policy.budget_s

    def _attempt(self, out: Outgoing, hook: WebhookDoc, doc: DeliveryDoc) -> tuple[str, DeliveryDoc]:
        """One POST; the delivery's status after it (delivered, failed for good, or pending: retry) and the
        delivery as it now stands."""
        began = time.perf_counter()
        now = utcnow()
        code: int | None = None
        error: str | None = None
        secret = self._registry.secret(hook.tenant)
        try:
            if not secret:
                raise ssrf.UnsafeTarget("no webhook signing secret is configured for this tenant")
            target = ssrf.vet(hook.url, allow_loopback=self._settings.webhook_allow_loopback,
                              loopback_ports=self._settings.loopback_ports, resolver=self._resolver)
            body = out.body_for(self._registry.content_policy(hook.tenant))
            code = self._sender(target, signed_headers(secret, doc.message_id, body, now), body,
                                self._settings.webhook_timeout_s)
            status = "delivered" if 200 <= code < 300 else "pending" if code in RETRY_STATUSES else "failed"
        except ssrf.UnsafeTarget as exc:
            error, status = f"refused: {exc}", "failed"
        except SendFailed as exc:
            error, status = str(exc), "pending"
        except (ssrf.LookupFailed, OSError) as exc:
            error, status = f"{type(exc).__name__}: {str(exc)[:200]}", "pending"
        attempt = DeliveryAttempt(at=now, status_code=code, error=error,
                                  duration_ms=round((time.perf_counter() - began) * 1000, 1))
        first = doc.first_attempt_at is None
        doc = doc.model_copy(update={"attempts": [*doc.attempts, attempt],
                                     "first_attempt_at": now if first else doc.first_attempt_at})
        self._store.record_attempt(out.job_id, hook.webhook_id, out.key, attempt, first=first,
                                   status=None if status == "pending" else status)
        log.info("webhook_attempt", job_id=out.job_id, webhook_id=hook.webhook_id, event_type=out.event_type,
                 status_code=code, error=error, outcome=status)
        return status, doc

    def _finish(self, out: Outgoing, hook: WebhookDoc, status: str) -> None:
        self._store.close_delivery(out.job_id, hook.webhook_id, out.key, status)


def outgoing(message: Mapping, job_data: Callable[[str, ContentPolicy], dict | None],
             sign: Callable[[str], str] | None = None) -> Outgoing | None:
    """The webhook event a soul-events message is, or None when it is none (e.g. request outcomes) or the job
    is gone. `job_data(job_id, policy)` gives the task view sent with completion events, as each content policy
    lets its tenants see it; `sign(object)` signs a progress event's preview (sent only to policies that show
    previews, functions/core/content_policy.py)."""
    attributes = message.get("attributes") or {}
    event_type = str(attributes.get("ce-type", ""))
    kind = EVENT_KINDS.get(event_type)
    if kind is None:
        return None
    try:
        raw = base64.b64decode(str(message.get("data") or ""), validate=True)
        data = json.loads(raw)
        job_id = str(data["job_id"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        log.warning("webhook_event_unreadable", event_type=event_type)
        return None
    parsed: JobStarted | JobProgress | None = None
    if kind is WebhookEvent.COMPLETED:
        key, view = "completed", job_data(job_id, DEFAULT_POLICY)
        if view is None:
            return None
    else:
        try:
            parsed = JobStarted.model_validate(data) if kind is WebhookEvent.START else JobProgress.model_validate(data)
        except ValidationError:
            log.warning("webhook_event_unreadable", event_type=event_type)
            return None
        key = "start" if isinstance(parsed, JobStarted) else f"progress-{parsed.seq}"
        view = {"task_id": job_id, **parsed.model_dump(mode="json", exclude={"job_id", "schema_version", "preview"})}
    # The event's own time, so a redelivered event is the same message (the same body under the same webhook-id).
    occurred = str(attributes.get("ce-time") or data.get("occurred_at") or utcnow().isoformat())
    def encode(data: dict) -> bytes:
        return json.dumps({"type": event_type, "timestamp": occurred, "data": data}, separators=(",", ":")).encode()

    bodies = {}
    if kind is WebhookEvent.COMPLETED:
        bodies = {policy.value: encode(job_data(job_id, policy) or view) for policy in ContentPolicy}
    elif isinstance(parsed, JobProgress) and parsed.preview is not None and sign is not None:
        preview = TaskPreview(task_id=job_id, step=parsed.preview.step, steps=parsed.preview.steps,
                              url=sign(parsed.preview.object)).model_dump(mode="json")
        bodies = {policy.value: encode({**view, "preview": preview}) for policy in ContentPolicy
                  if shows_previews(Viewer(policy=policy))}
    return Outgoing(job_id=job_id, event=kind, event_type=event_type, key=key, body=encode(view), bodies=bodies)


def handle_event(svc, message: Mapping, *, schedule: Scheduler | None = None,
                 **deliverer_options) -> dict[str, str]:
    """The `webhooks` function's body: one soul-events message (first attempts), or one soul-webhook-retries
    message (one target's next attempt). Retries are published with `schedule(data, attributes)` (by default on
    soul-webhook-retries). Raises only when Firestore or Pub/Sub fails (Pub/Sub then redelivers, and targets
    already served are skipped)."""
    attributes = {str(k): str(v) for k, v in (message.get("attributes") or {}).items()}
    try:
        retry = Retry.of(attributes)
    except ValueError as exc:  # nothing a redelivery could fix: acknowledged, and said
        log.warning("webhook_retry_unreadable", error=str(exc))
        return {}

    jobs: dict[str, JobDoc | None] = {}

    def task_view(job_id: str, policy: ContentPolicy = DEFAULT_POLICY) -> dict | None:
        if job_id not in jobs:
            jobs[job_id] = svc.jobs.job(job_id)  # one read for every policy's body
        job = jobs[job_id]
        if job is None:
            return None
        # One body per content policy for every target (targets may be of several tenants): no end users in it.
        view = svc.tasks.view(job, tenant="", viewer=Viewer(policy=policy))
        return view.model_dump(mode="json", exclude={"user_id", "actions", "deliveries"})

    out = outgoing(message, task_view, sign=lambda name: svc.signer.sign(name).url)
    if out is None:
        return {}
    publish = schedule or svc.publisher.publish_webhook_retry
    event_attributes = {k: v for k, v in attributes.items() if k not in (RETRY_TARGET, RETRY_DUE)}
    data = base64.b64decode(str(message.get("data") or ""))

    def scheduled(webhook_id: str, due: datetime) -> None:
        publish(data, {**event_attributes, RETRY_TARGET: webhook_id, RETRY_DUE: due.isoformat()})

    deliverer = Deliverer(svc.webhook_store, svc.webhooks, svc.settings, schedule=scheduled, **deliverer_options)
    return deliverer.deliver(out, retry)
