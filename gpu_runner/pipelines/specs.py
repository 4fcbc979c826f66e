"""What the pipelines render, as plain records checked on construction (diffusers' `check_inputs` style: a concise
error, never a silent fix): `RenderSpec` for one SDXL image, `AnimationSpec` for one SVD clip, and `batch_key`, the
rule for which images may share a pipeline call. No torch here: the stages plan jobs with these before any model
is loaded. A spec the job's own input makes invalid raises `InvalidRenderSpec`: terminal for the job."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image

from gpu_runner.errors import InvalidRenderSpec
from schemas.identity import SCHEDULERS

MIN_SIDE, MAX_SIDE = 64, 4096
MAX_STEPS = 1000  # the scheduler's training timesteps: more steps than that cannot be scheduled


@dataclass(frozen=True)
class LoraChoice:
    """The LoRA a render applies: loaded by name and version (`gpu_runner/pipelines/adapters.py`)."""

    name: str
    version: str
    scale: float
    object: str  # where its bytes are (GCS)


@dataclass(frozen=True)
class RenderSpec:
    """One image to render. Checked on construction, so an invalid spec cannot reach the pipeline. The identity
    fields (schemas/identity.py) default to none: the base model alone."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    lora: LoraChoice | None = None
    references: tuple[str, ...] = field(default=())  # object names of the reference images
    reference_set_version: str | None = None
    identity_scale: float = 0.0
    scheduler: str | None = None  # None: the pipeline's default

    def __post_init__(self) -> None:
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InvalidRenderSpec(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.lora is not None and not 0.0 <= self.lora.scale <= 2.0:
            raise InvalidRenderSpec(f"LoRA scale must be in [0, 2], got {self.lora.scale!r}")
        if not 0.0 <= self.identity_scale <= 2.0:
            raise InvalidRenderSpec(f"identity_scale must be in [0, 2], got {self.identity_scale!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRenderSpec("prompt must be a non-empty string")
        if not isinstance(self.negative_prompt, str):
            raise InvalidRenderSpec("negative_prompt must be a string (empty for none)")
        for side in ("width", "height"):
            value = getattr(self, side)
            if not isinstance(value, int) or value % 8 or not MIN_SIDE <= value <= MAX_SIDE:
                raise InvalidRenderSpec(f"{side} must be a multiple of 8 in [{MIN_SIDE}, {MAX_SIDE}], got {value!r}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise InvalidRenderSpec(f"steps must be an integer in [1, {MAX_STEPS}], got {self.steps!r}")
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance) or self.guidance < 0:
            raise InvalidRenderSpec(f"guidance must be a finite number >= 0, got {self.guidance!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise InvalidRenderSpec(f"seed must be an integer in [0, 2**64), got {self.seed!r}")


def batch_key(spec: RenderSpec) -> tuple:
    """Specs with equal keys can share one pipeline call: same size, steps and guidance, and the same kind of
    negative conditioning (zeros for none, encoded text otherwise), and the same adapter set (`adapter_key`)."""
    return (spec.width, spec.height, spec.steps, float(spec.guidance), bool(spec.negative_prompt),
            adapter_key(spec))


def adapter_key(spec: RenderSpec) -> tuple:
    """Everything a pipeline call applies to all its items at once: LoRA and scale, reference set and identity
    scale, scheduler. A batch never mixes two of these."""
    lora = (spec.lora.name, spec.lora.version, float(spec.lora.scale)) if spec.lora else None
    refs = (spec.reference_set_version, float(spec.identity_scale)) if spec.references else None
    return (lora, refs, spec.scheduler)


def parse_compile_shapes(text: str) -> list[tuple[int, int, int]]:
    """`"1024x1024:1,1024x1024:4"` -> [(1024, 1024, 1), (1024, 1024, 4)]; ValueError that names the bad item."""
    shapes = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            size, _, batch = item.partition(":")
            width, height = (int(side) for side in size.lower().split("x"))
            count = int(batch or 1)
        except ValueError:
            raise ValueError(f"compile shape {item!r} is not WIDTHxHEIGHT[:BATCH]") from None
        if width % 8 or height % 8 or not (64 <= width <= 4096 and 64 <= height <= 4096) or not 1 <= count <= 16:
            raise ValueError(f"compile shape {item!r}: sides a multiple of 8 in [64, 4096], batch in [1, 16]")
        shapes.append((width, height, count))
    return shapes


@dataclass(frozen=True)
class AnimationSpec:
    image: Image.Image
    num_frames: int
    fps: int
    width: int
    height: int
    steps: int
    motion_bucket_id: int
    noise_aug_strength: float
    decode_chunk_size: int
    seed: int

    def __post_init__(self) -> None:
        # Concise errors instead of silent fixes (diffusers' check_inputs style).
        checks = [
            (2 <= self.num_frames <= 64, "num_frames must be between 2 and 64"),
            (1 <= self.fps <= 60, "fps must be between 1 and 60"),
            (self.width >= 64 and self.width % 8 == 0, "width must be a multiple of 8, at least 64"),
            (self.height >= 64 and self.height % 8 == 0, "height must be a multiple of 8, at least 64"),
            (self.steps >= 1, "steps must be at least 1"),
            (0 <= self.motion_bucket_id <= 1023, "motion_bucket_id must be between 0 and 1023"),
            (0.0 <= self.noise_aug_strength <= 1.0, "noise_aug_strength must be between 0 and 1"),
            (self.decode_chunk_size >= 1, "decode_chunk_size must be at least 1"),
            (0 <= self.seed < 2**63, "seed must be in [0, 2**63)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRenderSpec(message)
