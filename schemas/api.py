"""HTTP request and response bodies of the `api` function. Paths and field names follow the original app."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas._base import Contract, Reply
from schemas.documents import Style
from schemas.ids import SOUL_ID_PATTERN, USER_ID_PATTERN, VARIANT_ID_PATTERN
from schemas.jobs import JobError, JobStatus, JobType

CUE_MAX_CHARS = 200


class ImageRequest(Contract):
    """`GET /image?soul_id&cue&user_id` or `POST /image` with the same fields as JSON."""

    soul_id: str = Field(pattern=SOUL_ID_PATTERN, description="The soul to draw, e.g. `nova`.")
    cue: str = Field(min_length=1, max_length=CUE_MAX_CHARS, description="A short cue, e.g. `penguin`.")
    user_id: str = Field(pattern=USER_ID_PATTERN, description="The end user, as asserted by the calling backend.")


class Variant(Reply):
    variant_id: str
    pk_id: str
    url: str = Field(description="V4 signed URL of the PNG.")
    expires_at: datetime
    width: int
    height: int
    seed: int
    created_at: datetime


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


class SelfieRequest(Contract):
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
    updated_at: datetime | None = None


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


class TaskActions(Reply):
    self: str
    cancel: str | None = None


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
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    cancel_requested: bool = False
    result: TaskResult | None = None
    error: JobError | None = None
    actions: TaskActions


class TaskPage(Reply):
    items: list[Task]
    next_cursor: str | None = None


class DurationStats(Reply):
    count: int
    p50_seconds: float | None
    p95_seconds: float | None


class TaskStats(Reply):
    """`GET /tasks/stats/summary`."""

    total: int
    by_status: dict[str, int]
    by_type: dict[str, int]
    durations: dict[str, DurationStats]
    sample_size: int


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
    backends: dict[str, str]
    model_backend: str
    configuration: dict[str, str | int | float | bool | None]


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


class VideoFromVariantQuery(Contract):
    """`POST /video/generate-from-variant?variant_id&num_frames&generate_gif` (the original app's query form)."""

    variant_id: str = Field(pattern=VARIANT_ID_PATTERN)
    num_frames: int | None = Field(default=None, ge=2, le=64)
    generate_gif: bool = True
    user_id: str | None = Field(default=None, pattern=USER_ID_PATTERN, description="For /tasks filters.")


class VideoGenerateRequest(Contract):
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
