"""The job contract: status enum and its allowed transitions, the Firestore job document, the JobRequested
message on soul-jobs and the completion event on soul-events."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from schemas._base import Contract, Document
from schemas.identity import MAX_REFERENCES, AdapterUsed, LoraRef, ReferenceRef, Reproducibility
from schemas.ids import JOB_ID_PATTERN, PK_PATTERN, SOUL_ID_PATTERN, VARIANT_ID_PATTERN
from schemas.safety import SafetyVerdict

SCHEMA_VERSION = 1


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class JobType(StrEnum):
    IMAGE = "image"
    VIDEO = "video"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

# Allowed transitions; everything else is a bug or a stale writer. A running job goes back to queued when its
# lease expired and the reconciler hands it out again.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.QUEUED, JobStatus.RUNNING}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


def can_transition(current: JobStatus | str, new: JobStatus | str) -> bool:
    return JobStatus(new) in TRANSITIONS[JobStatus(current)]


JobId = Annotated[str, Field(pattern=JOB_ID_PATTERN)]


class ImageJobSpec(Contract):
    """Everything the runner needs to render one variant; fixed when the job is created."""

    kind: Literal["image"] = "image"
    soul_id: str = Field(pattern=SOUL_ID_PATTERN)
    pk: str = Field(pattern=PK_PATTERN)
    variant_index: int = Field(ge=0)
    variant_id: str = Field(pattern=VARIANT_ID_PATTERN)
    cue: str = Field(min_length=1, max_length=500)
    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = Field(default="", max_length=2000)
    width: int = Field(ge=64, le=2048, multiple_of=8)
    height: int = Field(ge=64, le=2048, multiple_of=8)
    steps: int = Field(ge=1, le=150)
    guidance: float = Field(ge=0.0, le=30.0)
    seed: int = Field(ge=0, lt=2**32)
    style_fingerprint: str
    place: str | None = None
    # Identity and reproducibility (schemas/identity.py); defaults for jobs made before them.
    references: tuple[ReferenceRef, ...] = Field(default=(), max_length=MAX_REFERENCES)
    reference_set_version: str | None = None
    identity_scale: float = Field(default=0.0, ge=0.0, le=2.0)
    lora: LoraRef | None = None
    scheduler: str | None = None
    seed_pinned: bool = False


class VideoJobSpec(Contract):
    """An animation of an existing variant."""

    kind: Literal["video"] = "video"
    variant_id: str = Field(pattern=VARIANT_ID_PATTERN)
    source_object: str
    num_frames: int = Field(ge=2, le=64)
    fps: int = Field(ge=1, le=60)
    formats: tuple[Literal["gif", "mp4", "webp"], ...] = ("gif", "mp4", "webp")
    seed: int = Field(ge=0, lt=2**32)
    cue: str | None = Field(default=None, max_length=500)  # the source variant's, shown on the task; not keyed


JobSpec = Annotated[ImageJobSpec | VideoJobSpec, Field(discriminator="kind")]


class JobError(Contract):
    type: str
    message: str
    retryable: bool = False


class ImageResult(Contract):
    kind: Literal["image"] = "image"
    variant_id: str
    pk: str
    object: str
    width: int
    height: int
    seed: int
    bytes: int
    render_seconds: float
    created_at: datetime
    reproducibility: Reproducibility | None = None
    safety: SafetyVerdict | None = None  # None: rendered before the checker existed


class VideoOutput(Contract):
    format: Literal["gif", "mp4", "webp"]
    object: str
    content_type: str
    bytes: int


class VideoResult(Contract):
    kind: Literal["video"] = "video"
    variant_id: str
    num_frames: int
    fps: int
    outputs: tuple[VideoOutput, ...]
    render_seconds: float


JobResult = Annotated[ImageResult | VideoResult, Field(discriminator="kind")]


class JobLane(StrEnum):
    INTERACTIVE = "interactive"  # a user is waiting (HTTP, ingest): taken first
    BACKGROUND = "background"  # pre-renders and bulk work: never delays interactive work by more than one render


class JobMetrics(Contract):
    """What a job cost, like Replicate's `metrics.predict_time`: device seconds (its share of a batch) and model."""

    gpu_seconds: float = Field(ge=0.0)
    model: str
    device: str
    batch_size: int = Field(default=1, ge=1)
    adapter_load_seconds: float = Field(default=0.0, ge=0.0)  # loading this job's LoRA/IP-Adapter (0: resident)
    adapters: tuple[AdapterUsed, ...] = ()
    # The safety checker's share of the batch's device time (it scores the whole batch in one call).
    safety_seconds: float = Field(default=0.0, ge=0.0)
    safety_model: str | None = None


class JobPreview(Contract):
    """A small WebP of the forming image (`previews/{job_id}/{step}.webp`), every `SOUL_PREVIEW_EVERY` steps."""

    object: str
    step: int = Field(ge=1)
    steps: int = Field(ge=1)
    variant_index: int = Field(default=0, ge=0)


class GpuReservation(Contract):
    """The estimated GPU-seconds a job's creation reserved against its tenant's daily quota, and the counter shard
    holding them (soul_common/reservations.py); taken back when the job ends."""

    tenant: str
    counter: str
    millis: int = Field(ge=0)


class JobDoc(Document):
    """`jobs/{job_id}`: the source of truth for a job. Pub/Sub only carries its id."""

    job_id: str
    type: JobType
    status: JobStatus = JobStatus.QUEUED
    request: JobSpec
    requested_by: str | None = None
    # Tenancy (functions/services/jobs.py): the tenant whose request created the job (charged for its GPU time), the
    # tenants still waiting on it (a cancel withdraws one; the job stops when none is left), each tenant's end
    # users, and "tenant~user" keys for the /tasks?user_id filter. Jobs from before tenancy have none.
    tenant: str | None = None
    tenants: list[str] = []
    requesters: dict[str, list[str]] = {}
    requester_keys: list[str] = []
    soul_id: str | None = None
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    stage: str = "queued"
    eta_seconds: float | None = None
    result: JobResult | None = None
    error: JobError | None = None
    attempts: int = 0
    republished: int = 0  # times the reconciler published this job again (bounded: then it fails the job)
    lane: JobLane = JobLane.INTERACTIVE
    # Live events a requester's webhook asked for ("start", "progress"): the runner publishes them only then.
    notify: list[str] = []
    metrics: JobMetrics | None = None
    # The latest preview while denoising (runner, at most with each throttled progress write; cleared at the finish).
    preview: JobPreview | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    # Bumped at each claim: a runner's writes are fenced on (owner, generation), so a runner that paused past its
    # lease and re-claimed nothing can change nothing, even when the job went back to the same runner id.
    lease_generation: int = Field(default=0, ge=0)
    cancel_requested: bool = False
    # A cancel that found nobody else waiting says so here before it looks again (functions/services/tasks.py): a
    # joiner that reads it asks for a fresh job instead. The runner ignores it; it lapses after CANCEL_PENDING_S.
    cancel_pending_at: datetime | None = None
    gpu_reservation: GpuReservation | None = None
    created_at: datetime
    published_at: datetime | None = None
    event_published_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime


class JobRequested(Contract):
    """The message on soul-jobs. The job document holds the request; the message only says which job to run."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: JobId
    type: JobType


class JobEvent(Contract):
    """The completion event on soul-events (CloudEvent attributes: type, source, id = job id)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    type: JobType
    status: JobStatus
    soul_id: str | None = None
    requested_by: str | None = None
    result: JobResult | None = None
    error: JobError | None = None
    occurred_at: datetime
