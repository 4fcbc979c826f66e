"""HTTP request and response bodies of the `api` function. Paths and field names follow the original app."""

from __future__ import annotations

import unicodedata
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field

from schemas._base import Contract, Reply
from schemas.documents import Style
from schemas.identity import Reproducibility, SchedulerName
from schemas.ids import SOUL_ID_PATTERN, USER_ID_PATTERN, VARIANT_ID_PATTERN
from schemas.jobs import JobError, JobStatus, JobType
from schemas.push import Delivery, LaneOption, PrerenderStats, TaskPreview, WebhookOptions
from schemas.safety import Safety, Withheld

CUE_MAX_CHARS = 200


def _composed(value: object) -> object:
    """A cue's bound counts characters as composed (NFC): "é" sent as e + U+0301 is one character, as it is
    once normalized (functions/core/normalize.py); canonically equal cues are equally long."""
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


Cue = Annotated[str, BeforeValidator(_composed)]


def _in_utc(value: datetime) -> datetime:
    """An instant as UTC, refused when UTC cannot hold it (year 1 at +23:59 is the year 0): stored, it must be."""
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("the time is out of range once in UTC") from None


UtcInstant = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class ImageRequest(Contract):
    """`GET /image?soul_id&cue&user_id` or `POST /image` with the same fields as JSON."""

    soul_id: str = Field(pattern=SOUL_ID_PATTERN, description="The soul to draw, e.g. `nova`.")
    cue: Cue = Field(min_length=1, max_length=CUE_MAX_CHARS, description="A short cue, e.g. `penguin`.")
    user_id: str = Field(pattern=USER_ID_PATTERN, description="The end user, as asserted by the calling backend.")
    seed: int | None = Field(default=None, ge=0, lt=2**32, description=(
        "Pin the seed: the same pinned request is the same variant, rendered again it is the same pixels."))
    scheduler: SchedulerName | None = Field(default=None, description=(
        "A scheduler the soul's style allows (`style.schedulers`)."))


class ImageOrder(ImageRequest, WebhookOptions, LaneOption):
    """`POST /image` (and ingest `image` messages): the fields of GET /image, plus a webhook and a lane."""


class Variant(Reply):
    variant_id: str
    pk_id: str
    url: str = Field(description="V4 signed URL of the PNG.")
    expires_at: datetime
    width: int
    height: int
    seed: int
    created_at: datetime
    reproducibility: Reproducibility | None = Field(
        default=None, description="How it was made: model, weights, adapters, references, seed, scheduler, size.")
    safety: Safety | None = Field(default=None, description="The safety checker's verdict (content policies "
                                  "`flag` and `blur`; absent under `off`).")
    original_url: str | None = Field(default=None, description="Policy `blur`, admin keys only: a signed URL of "
                                     "the original when `url` serves the blurred rendition.")


class Place(Reply):
    """Where a selfie is taken, chosen from the shipped catalog."""

    key: str
    name: str
    city_key: str
    city_name: str


class ImageReady(Reply):
    """An unseen variant existed: answered at once."""

    status: Literal["ready"] = "ready"
    pk_id: str
    variant: Variant
    place: Place | None = None


class ImageQueued(Reply):
    """No unseen variant: a job makes one (or an identical request's job already does)."""

    status: JobStatus
    task_id: str
    pk_id: str
    status_url: str
    estimated_seconds: float
    place: Place | None = None


class SelfieRequest(WebhookOptions, LaneOption):
    """`POST /image/selfie`."""

    soul_id: str = Field(pattern=SOUL_ID_PATTERN)
    city_key: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="e.g. `paris`, `tokyo`, `new_york`.")
    mood: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="e.g. `happy`, `calm`, `adventurous`.")
    user_id: str = Field(pattern=USER_ID_PATTERN)


class SelfieCity(Reply):
    key: str
    name: str


class SelfieOptions(Reply):
    """`GET /image/selfie/options`: the cities and moods a selfie can ask for (from the shipped catalog)."""

    cities: list[SelfieCity]
    moods: list[str]


class MarkSeenQuery(Contract):
    """`POST /image/mark-seen?variant_id&user_id`."""

    variant_id: str = Field(pattern=VARIANT_ID_PATTERN)
    user_id: str = Field(pattern=USER_ID_PATTERN)


class Seen(Reply):
    variant_id: str
    user_id: str
    pk_id: str
    soul_id: str
    seen_at: datetime


class PageQuery(Contract):
    page_size: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z0-9_=-]+$")


class VariantPage(Reply):
    items: list[Variant]
    next_cursor: str | None = None


class SeenPage(Reply):
    items: list[Seen]
    next_cursor: str | None = None


class StyleUpsert(Contract):
    """`POST /style`: create or update a soul's style; last write wins on `updated_at` (default: now)."""

    soul_id: str = Field(pattern=SOUL_ID_PATTERN)
    display_name: str = Field(default="", max_length=100)
    style: Style
    updated_at: UtcInstant | None = Field(
        default=None, description="With a time zone; at most the configured clock skew in the future."
    )


class StyleDeleteQuery(Contract):
    """`DELETE /style/{soul_id}?updated_at=...`: the delete takes part in last-write-wins like a write."""

    updated_at: UtcInstant | None = Field(default=None, description="With a time zone; default: now.")


class Me(Reply):
    """`GET /me`: what the caller's key is."""

    tenant: str
    role: Literal["client", "admin"]


class StyleOut(Reply):
    soul_id: str
    display_name: str
    style: Style
    fingerprint: str
    source: Literal["stored", "catalog"]
    updated_at: datetime | None = None


class StylePage(Reply):
    items: list[StyleOut]
    next_cursor: str | None = None


class StyleDeleted(Reply):
    soul_id: str
    deleted: Literal[True] = True
    updated_at: datetime


class TaskListQuery(PageQuery):
    status: JobStatus | None = None
    type: JobType | None = None
    soul_id: str | None = Field(default=None, pattern=SOUL_ID_PATTERN)
    user_id: str | None = Field(default=None, pattern=USER_ID_PATTERN)


class MediaLink(Reply):
    format: str
    url: str
    expires_at: datetime
    content_type: str
    bytes: int


class TaskResult(Reply):
    variant: Variant | None = None
    outputs: list[MediaLink] = []
    withheld: Withheld | None = Field(default=None, description="Content policy `withhold`: the image was flagged, "
                                      "so no URL is given (`variant` is absent).")


class TaskActions(Reply):
    self: str
    cancel: str | None = None


class TaskMetrics(Reply):
    """What a finished job cost (like Replicate's `metrics.predict_time`), as the runner measured it."""

    gpu_seconds: float = Field(description="Device seconds this job used: its share of a batched render.")
    model: str
    device: str
    batch_size: int = 1
    safety_seconds: float = Field(default=0.0, description="The safety checker's share of the batch's device time.")
    safety_model: str | None = None


class Task(Reply):
    """`GET /tasks/{task_id}`."""

    task_id: str
    type: JobType
    status: JobStatus
    progress: float
    stage: str
    eta_seconds: float | None = None
    soul_id: str | None = None
    user_id: str | None = None
    cue: str | None = Field(default=None, description="The cue of an image task (a selfie's composed cue); None for "
                            "animations.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    cancel_requested: bool = False
    result: TaskResult | None = None
    error: JobError | None = None
    actions: TaskActions
    metrics: TaskMetrics | None = None
    queue_position: int | None = Field(
        default=None,
        description="Queued tasks on `GET /tasks/{task_id}`: how many queued tasks of the same lane were created "
        "before this one (0: next). None when not queued, and in listings.",
    )
    deliveries: list[Delivery] = Field(default_factory=list, description="This tenant's webhook deliveries.")
    preview: TaskPreview | None = Field(default=None, description="Running image tasks with previews on "
                                        "(SOUL_PREVIEW_EVERY): the latest preview of the forming image.")


class TaskPage(Reply):
    items: list[Task]
    next_cursor: str | None = None


class DurationStats(Reply):
    count: int
    p50_seconds: float | None
    p95_seconds: float | None


class UsageQuery(Contract):
    days: int = Field(default=7, ge=1, le=92, description="How many UTC days back, today included.")


class UsageDay(Reply):
    day: str = Field(description="UTC day, YYYY-MM-DD.")
    jobs: int = Field(description="Jobs of this tenant the runners finished that day.")
    images: int = Field(description="Image jobs that succeeded.")
    gpu_seconds: float
    image_gpu_seconds: float
    dedup_hits: int = Field(description="Image requests answered with an existing variant.")
    gpu_seconds_saved_by_dedup: float | None = Field(
        description="dedup_hits x the deployment's mean GPU-seconds per rendered image (None before any).")


class Usage(Reply):
    """`GET /usage`: the caller's own tenant, by day, from rollups written as work finishes."""

    tenant: str
    days: list[UsageDay]
    gpu_seconds: float
    images: int
    dedup_hits: int


class GpuStats(Reply):
    """Device time spent and saved. A delivered image is a rendered variant or a dedup hit (an existing variant
    answered a request); a hit saves what a render costs on average."""

    total_gpu_seconds: float = Field(description="All jobs, image and video.")
    image_gpu_seconds: float
    rendered_images: int = Field(description="Succeeded image jobs.")
    dedup_hits: int = Field(description="Image requests answered with an existing variant.")
    gpu_seconds_per_image_job: float | None = Field(description="Mean over succeeded image jobs that report it.")
    gpu_seconds_per_delivered_image: float | None = Field(description="image_gpu_seconds / (rendered + hits).")
    gpu_seconds_saved_by_dedup: float | None = Field(description="dedup_hits x gpu_seconds_per_image_job.")


class TaskStats(Reply):
    """`GET /tasks/stats/summary`."""

    total: int
    by_status: dict[str, int]
    by_type: dict[str, int]
    durations: dict[str, DurationStats]
    sample_size: int
    gpu: GpuStats | None = None
    prerenders: PrerenderStats | None = None  # the warm pool's pre-renders: made vs. delivered


class EstimateQuery(Contract):
    num_frames: int | None = Field(default=None, ge=2, le=64)


class VideoEstimate(Reply):
    """`GET /video/estimate`: the original app's fields, plus where the figures come from."""

    estimated_seconds: float
    estimated_minutes: float
    video_generation_seconds: float
    gif_conversion_seconds: float
    num_frames: int
    source: Literal["measured", "configured"]
    seconds_per_frame: float
    device: str | None = None


class Info(Reply):
    name: str
    version: str
    model_backend: str
    # Infrastructure (emulator hosts and ports, project, bucket, signing): admin keys only.
    backends: dict[str, str] | None = None
    configuration: dict[str, str | int | float | bool | None] | None = None


class StaticListing(Reply):
    items: list[Variant]
    next_cursor: str | None = None


class ErrorDetail(Reply):
    code: str
    message: str
    field: str | None = None


class ErrorBody(Reply):
    """The one shape of every 4xx/5xx answer."""

    error: ErrorDetail


class Health(Reply):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}


class VideoFromVariantQuery(WebhookOptions):
    """`POST /video/generate-from-variant?variant_id&num_frames&generate_gif` (the original app's query form)."""

    variant_id: str = Field(pattern=VARIANT_ID_PATTERN)
    num_frames: int | None = Field(default=None, ge=2, le=64)
    generate_gif: bool = True
    user_id: str | None = Field(default=None, pattern=USER_ID_PATTERN, description="For /tasks filters.")


class VideoGenerateRequest(WebhookOptions):
    """`POST /video/generate`: `image_path` names an image object of this project's bucket that belongs to a
    variant, as `images/{soul_id}/{pk_id}/{variant_id}.png` or `gs://{bucket}/images/...`. Nothing else is read."""

    image_path: str = Field(min_length=1, max_length=300)
    num_frames: int | None = Field(default=None, ge=2, le=64)
    generate_gif: bool = True
    user_id: str | None = Field(default=None, pattern=USER_ID_PATTERN, description="For /tasks filters.")


class VideoAccepted(Reply):
    """The animation job for this (variant, frames, fps, formats): new, running, or already done."""

    status: JobStatus
    task_id: str
    variant_id: str
    num_frames: int
    formats: list[str]
    status_url: str
    estimated_seconds: float
    result: TaskResult | None = None


class RequestOutcome(Reply):
    """Published on soul-events for each request that arrived on soul-requests (ingest): accepted with the
    answer the HTTP API would have given, or rejected with the error it would have answered."""

    schema_version: Literal[1] = 1
    request_id: str
    type: str
    accepted: bool
    answer: ImageReady | ImageQueued | VideoAccepted | None = None
    error: ErrorDetail | None = None
