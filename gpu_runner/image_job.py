"""One image job: render the variant the job names with SDXL, upload it create-only, record the variant.

Idempotent by construction: the variant id, seed and object name were fixed when the job was created, so a
re-run after a crash finds the object of the earlier attempt and skips the render, or renders the same thing."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

from gpu_runner import failpoints
from gpu_runner.failpoints import Failpoints
from gpu_runner.jobstore import JobStore
from gpu_runner.models import ModelHost
from gpu_runner.progress import ProgressReporter
from gpu_runner.settings import RunnerSettings
from gpu_runner.storage import MediaStore
from schemas import names
from schemas._base import utcnow
from schemas.documents import VariantDoc
from schemas.jobs import ImageJobSpec, ImageResult, JobDoc


@dataclass(frozen=True)
class WorkContext:
    settings: RunnerSettings
    store: JobStore
    media: MediaStore
    models: ModelHost
    failpoints: Failpoints = failpoints.NONE


def capped(width: int, height: int, steps: int, max_side: int, max_steps: int) -> tuple[int, int, int]:
    """Size and steps for a tiny stand-in model: its pixels are noise at any size, so render small and few."""
    scale = min(1.0, max_side / max(width, height))
    return max(64, int(width * scale) // 8 * 8), max(64, int(height * scale) // 8 * 8), min(steps, max_steps)


def render_size(spec: ImageJobSpec, models: ModelHost, settings: RunnerSettings) -> tuple[int, int, int]:
    """Width, height and steps actually rendered: the tiny stand-in is capped, real weights render as asked."""
    if not models.tiny_sdxl:
        return spec.width, spec.height, spec.steps
    return capped(spec.width, spec.height, spec.steps, settings.tiny_max_side, settings.tiny_max_steps)


def run_image_job(job: JobDoc, ctx: WorkContext, progress: ProgressReporter) -> ImageResult:
    spec = job.request
    assert isinstance(spec, ImageJobSpec)
    object_name = names.image_object(spec.soul_id, spec.pk, spec.variant_id)
    width, height, steps = render_size(spec, ctx.models, ctx.settings)
    started = time.perf_counter()
    stored = ctx.media.existing(object_name)
    if stored is None:
        from gpu_runner.sdxl import RenderSpec, render_image

        progress.stage("loading_model", 0.02)
        pipe = ctx.models.sdxl()
        render_started = time.perf_counter()
        image = render_image(
            pipe,
            RenderSpec(
                prompt=spec.prompt, negative_prompt=spec.negative_prompt, width=width, height=height,
                steps=steps, guidance=spec.guidance, seed=spec.seed,
            ),
            on_step=lambda done, total: _on_step(ctx, progress, done, total),
        )
        rendered_in = time.perf_counter() - render_started
        ctx.store.record_pace(
            ctx.models.device.name, image_seconds=rendered_in, image_seconds_per_step=rendered_in / steps
        )
        progress.stage("uploading", 0.92)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        stored = ctx.media.put_once(object_name, buffer.getvalue(), "image/png")
        ctx.failpoints.hit(failpoints.AFTER_UPLOAD, job_id=job.job_id)
    render_seconds = round(time.perf_counter() - started, 4)
    created_at = utcnow()
    ctx.store.save_variant(
        job.job_id,
        VariantDoc(
            variant_id=spec.variant_id, pk=spec.pk, soul_id=spec.soul_id, variant_index=spec.variant_index,
            object=object_name, width=width, height=height, seed=spec.seed, bytes=stored.size,
            job_id=job.job_id, cue=spec.cue, place=spec.place, created_at=created_at,
        )
    )
    ctx.failpoints.hit(failpoints.AFTER_VARIANT_WRITE, job_id=job.job_id)
    return ImageResult(
        variant_id=spec.variant_id, pk=spec.pk, object=object_name, width=width, height=height, seed=spec.seed,
        bytes=stored.size, render_seconds=render_seconds, created_at=created_at,
    )


def _on_step(ctx: WorkContext, progress: ProgressReporter, done: int, total: int) -> None:
    ctx.failpoints.hit(failpoints.MID_RENDER, step=done)
    progress.step(done, total, stage="denoising", span=(0.05, 0.9))
