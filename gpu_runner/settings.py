"""Configuration of the GPU runner: one settings object, read from the environment once in `__main__` and passed
down. The original app's variable names (FORCE_CPU, DEVICE_MEMORY_FRACTION, MAX_CONCURRENT_TASKS, LOG_LEVEL,
SVD_*) keep their meaning; newer knobs carry the SOUL_ prefix."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import names
from soul_common import retention
from soul_common.reconciler import redelivery_window


def _default_runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class RunnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOUL_", extra="ignore", frozen=True)

    project_id: str = Field(default="soul-local", validation_alias=_alias("GCS_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"))
    bucket: str = Field(default="soul-local-media", validation_alias=_alias("GCS_BUCKET_NAME"))
    log_level: str = Field(default="INFO", validation_alias=_alias("LOG_LEVEL"))
    runner_id: str = Field(default_factory=_default_runner_id)

    # Device.
    force_cpu: bool = Field(default=False, validation_alias=_alias("FORCE_CPU"))
    device_memory_fraction: float = Field(default=0.8, gt=0.0, le=1.0, validation_alias=_alias("DEVICE_MEMORY_FRACTION"))
    # One job at a time per GPU; more slots only make sense with several GPUs or CPU stand-ins.
    max_concurrent_tasks: int = Field(default=1, ge=1, le=16, validation_alias=_alias("MAX_CONCURRENT_TASKS"))

    # Models: None = the offline tiny random-weight pipelines; a local folder or single .safetensors = real weights.
    sdxl_model: str | None = Field(default=None, validation_alias=_alias("SDXL_MODEL"))
    svd_model: str | None = Field(default=None, validation_alias=_alias("SVD_MODEL"))
    model_cache_dir: Path = Field(default=Path.home() / ".cache" / "soul" / "models")
    # The tiny stand-in renders at most this size and step count: its pixels are noise at any size.
    tiny_max_side: int = Field(default=256, ge=64, le=2048)
    tiny_max_steps: int = Field(default=4, ge=1, le=150)
    tiny_svd_max_side: int = Field(default=128, ge=64, le=2048)
    tiny_svd_max_steps: int = Field(default=4, ge=1, le=150)
    # Identity (gpu_runner/pipelines/adapters.py): the IP-Adapter folder (weights file + image_encoder/; None = the
    # tiny random one), LoRAs kept resident (count and bytes), and hot-swapping (None = when the UNet is compiled).
    ip_adapter_model: str | None = None
    ip_adapter_weight_name: str = "ip-adapter.safetensors"
    lora_resident: int = Field(default=4, ge=1, le=64)
    lora_budget_mb: float = Field(default=1024.0, gt=0)
    lora_hotswap: bool | None = None
    lora_hotswap_rank: int = Field(default=128, ge=1, le=1024)
    # The layers the compiled UNet's LoRA slot covers (adapters.py): names or dotted tails, comma-separated. A LoRA
    # that trains other layers is refused by a compiled runner (an eager one takes it).
    lora_slot_targets: str = Field(default="to_q,to_k,to_v,to_out.0,q_proj,k_proj,v_proj,out_proj",
                                   pattern=r"^[A-Za-z0-9_.]+(,[A-Za-z0-9_.]+)*$")

    # Speed (gpu_runner/pipelines/acceleration.py): `auto` takes what was measured to pay on this card (else off/none).
    compile: str = Field(default="auto", pattern="^(auto|off|regional|full)$")
    quantize: str = Field(default="auto", pattern="^(auto|none|fp8)$")
    # What a missing compile artifact means: compile now (minutes on a big model, once per key) or serve eager.
    compile_fallback: str = Field(default="compile", pattern="^(compile|eager)$")
    # The warm-up shapes compiled at start, "WIDTHxHEIGHT:BATCH,..."; empty = the model's native size, batch 1.
    compile_shapes: str = ""
    # Compile artifacts (pipelines/compile_cache.py): on the VM's disk (default: under model_cache_dir) and, unless
    # empty, under this prefix in the bucket, so a new VM starts warm.
    compile_cache_dir: Path | None = None
    compile_cache_prefix: str = Field(default="compile-cache/", pattern=r"^([a-z0-9][a-z0-9._-]*/)*$")

    # SVD (seed names).
    svd_num_frames: int = Field(default=25, ge=2, le=64, validation_alias=_alias("SVD_NUM_FRAMES"))
    svd_fps: int = Field(default=7, ge=1, le=60, validation_alias=_alias("SVD_FPS"))
    svd_image_width: int = Field(default=1024, ge=64, le=2048, validation_alias=_alias("SVD_IMAGE_WIDTH"))
    svd_image_height: int = Field(default=576, ge=64, le=2048, validation_alias=_alias("SVD_IMAGE_HEIGHT"))
    svd_steps: int = Field(default=25, ge=1, le=150, validation_alias=_alias("SVD_NUM_INFERENCE_STEPS"))
    svd_decode_chunk_size: int = Field(default=8, ge=1, le=64, validation_alias=_alias("SVD_DECODE_CHUNK_SIZE"))
    svd_motion_bucket_id: int = Field(default=127, ge=0, le=1023, validation_alias=_alias("SVD_MOTION_BUCKET_ID"))
    svd_noise_aug_strength: float = Field(default=0.02, ge=0.0, le=1.0,
                                          validation_alias=_alias("SVD_NOISE_AUG_STRENGTH"))

    # Safety checker (gpu_runner/pipelines/safety.py), run on every rendered image before its upload: a local
    # StableDiffusionSafetyChecker folder, or None = the tiny random one. An image is flagged when its score is above
    # the threshold (0 = the checker's own line); flagged images also get a blurred rendition of this radius (in
    # pixels at 1024 px, scaled with the image).
    safety_model: str | None = None
    safety_threshold: float = Field(default=0.0, ge=-10.0, le=10.0)
    safety_blur_radius: float = Field(default=48.0, gt=0.0, le=512.0)
    # Previews while denoising (gpu_runner/stages/previews.py): every N steps (0 = off), decoded by TAESD-XL from a
    # local folder when set, else by the linear latent->RGB map; a WebP of at most `preview_max_side` pixels.
    preview_every: int = Field(default=0, ge=0, le=1000)
    preview_model: str | None = None
    preview_max_side: int = Field(default=256, ge=32, le=1024)
    preview_quality: int = Field(default=60, ge=1, le=100)

    # Work distribution. Lanes: the subscriptions in priority order, comma-separated (SOUL_SUBSCRIPTIONS); unset =
    # `subscription` (interactive) then the background lane. A missing subscription is skipped (logged once).
    subscription: str = "soul-jobs-runner"
    subscriptions: str = ""
    # Pipeline: claimed jobs waiting while one renders (0 = claim only when the device is idle), jobs per pipeline
    # call (None = by free device memory, 1 on CPU), and how long a batch may wait for partners.
    lookahead: int = Field(default=1, ge=0, le=8)
    max_batch: int | None = Field(default=None, ge=1, le=16)
    batch_wait_seconds: float = Field(default=0.03, ge=0.0, le=1.0)
    lease_seconds: float = Field(default=60.0, ge=5.0)
    # Also how soon a cancel request is noticed (the beat reads the job document).
    heartbeat_seconds: float = Field(default=2.0, ge=0.2)
    progress_interval_seconds: float = Field(default=1.0, ge=0.0)
    # Progress and stage writes (advisory) wait this long after the runner's last write of the job's document
    # (claim, variant, finish are never delayed): about one write per second per document, Firestore's sustained
    # rate, and a sub-second job's lifecycle writes are not crowded into one second by ticks (issue 17).
    job_write_gap_seconds: float = Field(default=1.0, ge=0.0)
    pull_timeout_seconds: float = Field(default=5.0, ge=0.1)
    idle_sleep_seconds: float = Field(default=0.05, ge=0.0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0.0)
    # Reconciler: re-publishes jobs whose message may be lost (never published, lease expired, stuck queued).
    reconcile_interval_seconds: float = Field(default=30.0, ge=0.5)
    unpublished_after_seconds: float = Field(default=30.0, ge=0.0)
    # From the deployed delivery policy (soul_common/delivery.py, checked equal to Terraform), as the function's.
    requeue_queued_after_seconds: float = Field(default=redelivery_window().total_seconds(), ge=1.0)
    # How long a finished job is kept before Firestore's TTL deletes it (soul_common/retention.py).
    job_retention_days: float = Field(default=retention.JOB_RETENTION.days, gt=0)

    # Overall deadlines of the runner's own backend calls (soul_common/deadlines.py).
    firestore_timeout_seconds: float = Field(default=10.0, gt=0.0)
    pubsub_timeout_seconds: float = Field(default=10.0, gt=0.0)
    gcs_timeout_seconds: float = Field(default=30.0, gt=0.0)

    # Chaos runs only (gpu_runner/failpoints.py): "name:probability[,name:probability]"; the seed replays a run.
    failpoints: str = ""
    failpoint_seed: int | None = None

    # Health responder (gpu_runner/health.py): off unless a port is set (the image sets 8080; 0 = any free port).
    health_port: int | None = Field(default=None, ge=0, le=65535)
    health_host: str = "127.0.0.1"
    health_stale_after_seconds: float = Field(default=120.0, gt=0.0)
    health_startup_grace_seconds: float = Field(default=900.0, gt=0.0)

    @field_validator("failpoints")
    @classmethod
    def _known_failpoints(cls, value: str) -> str:
        from gpu_runner.failpoints import parse

        parse(value)
        return value

    @field_validator("compile_shapes")
    @classmethod
    def _valid_shapes(cls, value: str) -> str:
        from gpu_runner.pipelines.specs import parse_compile_shapes

        parse_compile_shapes(value)
        return value

    @property
    def subscription_list(self) -> list[str]:
        given = [name.strip() for name in self.subscriptions.split(",") if name.strip()]
        return given or [self.subscription, names.SUB_RUNNER_BACKGROUND]

    @property
    def lora_slot_target_list(self) -> tuple[str, ...]:
        return tuple(self.lora_slot_targets.split(","))
