"""Contracts of the push side of the API (issue 12): the webhook options a request may carry, the webhook
records and delivery attempts kept per job, the start/progress events on soul-events, and the server-sent
event a `/tasks/{id}/events` stream sends. A job is shared by every requester (dedup), so webhooks are stored
per requester under the job, never on the job document itself."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator

from schemas._base import Contract, Document, Reply
from schemas.ids import SOUL_ID_PATTERN
from schemas.jobs import JobLane, JobPreview, JobStatus, JobType

SCHEMA_VERSION = 1
WEBHOOK_URL_MAX = 2000


class WebhookEvent(StrEnum):
    """What a requester can ask to be told, as in Replicate's `webhook_events_filter`."""

    START = "start"
    PROGRESS = "progress"
    COMPLETED = "completed"


DEFAULT_WEBHOOK_EVENTS = (WebhookEvent.COMPLETED,)


class WebhookOptions(Contract):
    """Fields a work-creating request may add: where to POST the job's news, and which news."""

    webhook: str | None = Field(
        default=None, max_length=WEBHOOK_URL_MAX, pattern=r"^https?://[^\s]+$",
        description="https URL to POST signed job events to (Standard Webhooks); http only to loopback locally.",
    )
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None, min_length=1, max_length=3,
        description="Which events to send: `start`, `progress`, `completed` (default: completed).",
    )

    @field_validator("webhook_events_filter", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # In a query string the list comes as one comma-separated value.
        return [part.strip() for part in value.split(",")] if isinstance(value, str) else value


class LaneOption(Contract):
    """A request may ask for the background lane (bulk work nobody waits on); default interactive."""

    lane: JobLane = Field(default=JobLane.INTERACTIVE, description="`background` for bulk work nobody waits on.")


class WebhookDoc(Document):
    """`jobs/{job_id}/webhooks/{webhook_id}`: one requester's webhook for one job."""

    webhook_id: str
    job_id: str
    tenant: str
    url: str
    events: list[WebhookEvent]
    created_at: datetime
    # Set when its tenant canceled its part of a job others still wait on: it is sent no more of the job's events
    # (its task reads canceled); registering it again clears it.
    withdrawn_at: datetime | None = None


class DeliveryAttempt(Contract):
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float


class DeliveryDoc(Document):
    """`jobs/{job_id}/webhooks/{webhook_id}/deliveries/{key}`: one event to one target, with every attempt."""

    key: str
    message_id: str  # the `webhook-id` header: the same on every retry of this delivery
    event: WebhookEvent
    event_type: str
    status: Literal["pending", "delivered", "failed"] = "pending"
    attempts: list[DeliveryAttempt] = Field(default_factory=list)
    first_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None  # while pending: when the scheduled retry is due
    finished_at: datetime | None = None


class Delivery(Reply):
    """A delivery as `GET /tasks/{id}` lists it (the asking tenant's own only)."""

    webhook_id: str
    url: str
    event: WebhookEvent
    event_type: str
    status: str
    attempts: list[DeliveryAttempt]


class JobStarted(Contract):
    """Data of a `soul.job.started` event on soul-events (CloudEvent id: `{job_id}:started`)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    type: JobType
    status: JobStatus = JobStatus.RUNNING
    lane: JobLane = JobLane.INTERACTIVE
    occurred_at: datetime


class JobProgress(Contract):
    """Data of a `soul.job.progress` event (CloudEvent id: `{job_id}:progress:{seq}`); throttled by the runner."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    type: JobType
    seq: int = Field(ge=0)
    progress: float = Field(ge=0.0, le=1.0)
    stage: str
    eta_seconds: float | None = None
    occurred_at: datetime
    # The latest preview when one came with this tick (SOUL_PREVIEW_EVERY); webhooks get it signed, per policy.
    preview: JobPreview | None = None


class TaskPreview(Reply):
    """A preview of the forming image: `event: preview` of `GET /tasks/{id}/events`, and `Task.preview`. The URL is a
    short-lived V4 signed URL of a small WebP (never an inline data URL); not sent to tenants whose content policy is
    `blur` or `withhold` (a preview is shown before the checker has scored the image)."""

    task_id: str
    step: int
    steps: int
    url: str


class TaskUpdate(Reply):
    """One server-sent event of `GET /tasks/{id}/events` (`event: update`; the last one carries the result)."""

    task_id: str
    status: JobStatus
    stage: str
    progress: float
    eta_seconds: float | None = None
    result: dict | None = None
    error: dict | None = None


class WarmRequest(Contract):
    """`POST /image/warm`: keep `variants` fresh variants of this cue rendered ahead (admin or batch keys)."""

    soul_id: str = Field(pattern=SOUL_ID_PATTERN)
    cue: str = Field(min_length=1, max_length=200)
    variants: int = Field(default=1, ge=1, le=16, description="How many unseen variants to keep ahead.")


class WarmAnswer(Reply):
    pk_id: str
    ahead: int
    queued: list[str] = Field(description="Task ids of the pre-renders this call queued (none when enough exist).")


class PrerenderDoc(Document):
    """`warm_pool/{pk}/prerenders/{variant_index}`: one pre-render, why it was made, and whether anyone took it."""

    pk: str
    variant_index: int
    job_id: str
    reason: str
    made_at: datetime
    tenant: str | None = None  # whose demand or POST /image/warm asked for it (and was charged)
    delivered: bool = False
    delivered_at: datetime | None = None


class PrerenderStats(Reply):
    """Pre-renders made by the warm pool vs. later delivered to someone; waste = 1 - delivered / made."""

    made: int
    delivered: int
    waste_ratio: float | None = None
