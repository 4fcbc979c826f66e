"""Firestore documents other than jobs: the prompt index, variants, what a user has seen, style profiles."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas._base import Contract, Document
from schemas.identity import SCHEDULERS, Reproducibility, SchedulerName
from schemas.ids import SOUL_ID_PATTERN
from schemas.safety import SafetyVerdict


class Style(Contract):
    """How a soul is drawn. Its fingerprint is part of the prompt key, so a changed style never serves old images."""

    prompt_prefix: str = Field(default="", max_length=500)
    prompt_suffix: str = Field(default="", max_length=500)
    negative_prompt: str = Field(default="", max_length=1000)
    width: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=30, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0.0, le=30.0)
    # Identity (schemas/identity.py): how strongly the soul's reference images condition each render (IP-Adapter
    # scale; no effect without references), the scheduler it renders with (None: the runner's default) and the
    # schedulers a request may pick. Left at their defaults they are not part of the fingerprint (today's keys).
    identity_scale: float = Field(default=0.6, ge=0.0, le=2.0)
    scheduler: SchedulerName | None = None
    schedulers: tuple[SchedulerName, ...] = Field(default=(), max_length=len(SCHEDULERS))


class StyleProfile(Document):
    """`styles/{soul_id}`: a soul's stored style; last write wins on `updated_at`. A delete is a tombstone
    (`deleted`, no style) so that an older write arriving late cannot bring the style back."""

    soul_id: str = Field(pattern=SOUL_ID_PATTERN)
    display_name: str = ""
    style: Style | None = None
    deleted: bool = False
    updated_at: datetime


class RunnerStats(Document):
    """`runner_stats/{runner_id}`: pace measured by one runner on its device, for estimates (one writer each)."""

    device: str
    runner_id: str | None = None
    image_seconds: float | None = None  # one whole image job, rendering included
    image_seconds_per_step: float | None = None
    video_seconds_per_frame: float | None = None  # SVD denoising + decoding, per output frame
    encode_seconds_per_frame: float | None = None  # GIF/MP4/WebP encoding, per output frame
    samples: int = 0
    updated_at: datetime


class PromptDoc(Document):
    """`prompts/{pk}`: the dedup index entry for one prompt key."""

    pk: str
    kind: str
    soul_id: str
    cue: str
    style_fingerprint: str
    variant_ids: list[str] = []  # the runner's, in the batch with each variant: the request path reads these
    variant_indices: list[int] = []  # the runner's too: the next variant's index without reading the variants
    created_at: datetime
    updated_at: datetime


class VariantDoc(Document):
    """`variants/{variant_id}`: one generated image."""

    variant_id: str
    pk: str
    soul_id: str
    variant_index: int
    object: str
    width: int
    height: int
    seed: int
    bytes: int
    job_id: str
    cue: str
    place: str | None = None
    created_at: datetime
    reproducibility: Reproducibility | None = None  # how it was made (schemas/identity.py)
    # The checker's verdict (shared by every tenant; each tenant's policy decides what it gets). None: older.
    safety: SafetyVerdict | None = None


class SeenDoc(Document):
    """`users/{user_id}/seen/{variant_id}`."""

    variant_id: str
    pk: str
    soul_id: str
    seen_at: datetime
