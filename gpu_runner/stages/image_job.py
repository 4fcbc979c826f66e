"""One image job, in the pipeline's pieces: plan it (intake: spec checked, earlier upload found), render it (render
stage, possibly in a batch: gpu_runner/stages/render.py), store it (finish stage: PNG, create-only upload, variant).

Idempotent by construction: the variant id, seed and object name were fixed when the job was created, so a
re-run after a crash finds the object of the earlier attempt and skips the render, or renders the same thing."""

from __future__ import annotations

import io

from gpu_runner import failpoints
from gpu_runner.pipelines.host import ModelHost
from gpu_runner.pipelines.specs import LoraChoice, RenderSpec
from gpu_runner.settings import RunnerSettings
from gpu_runner.stages.records import ImagePlan, WorkContext
from gpu_runner.stages.safety import blurred, verdict_from_metadata, verdict_metadata
from schemas import names
from schemas._base import utcnow
from schemas.documents import VariantDoc
from schemas.identity import AdapterUsed, Reproducibility
from schemas.jobs import ImageJobSpec, ImageResult, JobDoc
from schemas.safety import SafetyVerdict


def capped(width: int, height: int, steps: int, max_side: int, max_steps: int) -> tuple[int, int, int]:
    """Size and steps for a tiny stand-in model: its pixels are noise at any size, so render small and few."""
    scale = min(1.0, max_side / max(width, height))
    return max(64, int(width * scale) // 8 * 8), max(64, int(height * scale) // 8 * 8), min(steps, max_steps)


def render_size(spec: ImageJobSpec, models: ModelHost, settings: RunnerSettings) -> tuple[int, int, int]:
    """Width, height and steps actually rendered: the tiny stand-in is capped, real weights render as asked."""
    if not models.tiny_sdxl:
        return spec.width, spec.height, spec.steps
    return capped(spec.width, spec.height, spec.steps, settings.tiny_max_side, settings.tiny_max_steps)


def plan_image(job: JobDoc, ctx: WorkContext) -> ImagePlan:
    spec = job.request
    assert isinstance(spec, ImageJobSpec)
    width, height, steps = render_size(spec, ctx.models, ctx.settings)
    object_name = names.image_object(spec.soul_id, spec.pk, spec.variant_id)
    lora = spec.lora
    render = RenderSpec(prompt=spec.prompt, negative_prompt=spec.negative_prompt, width=width, height=height,
                        steps=steps, guidance=spec.guidance, seed=spec.seed,
                        lora=LoraChoice(lora.name, lora.version, lora.scale, lora.object) if lora else None,
                        references=tuple(ref.object for ref in spec.references),
                        reference_set_version=spec.reference_set_version, identity_scale=spec.identity_scale,
                        scheduler=spec.scheduler)
    return ImagePlan(object_name=object_name, render=render, stored=ctx.media.existing(object_name))


def reproducibility(job: JobDoc, plan: ImagePlan, model_tag: str, models: ModelHost,
                    scheduler: str | None = None) -> Reproducibility:
    """How this image is made: enough to make it again (`seed` pinned) on the same device and weights."""
    spec = job.request
    assert isinstance(spec, ImageJobSpec)
    render = plan.render
    if scheduler is None:  # not rendered here (an earlier attempt's object): the scheduler it would use
        from gpu_runner.pipelines.adapters import scheduler_name

        scheduler = render.scheduler or scheduler_name(models.sdxl().scheduler)
    adapters = (AdapterUsed(name=render.lora.name, version=render.lora.version, scale=render.lora.scale),) \
        if render.lora else ()
    return Reproducibility(
        model=model_tag, weights_fingerprint=models.weights_fingerprint(), adapters=adapters,
        reference_set_version=render.reference_set_version if render.references else None,
        identity_scale=render.identity_scale if render.references else 0.0, seed=render.seed,
        seed_pinned=spec.seed_pinned, scheduler=scheduler, steps=render.steps, guidance=render.guidance,
        width=render.width, height=render.height,
    )


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def store_image(job: JobDoc, plan: ImagePlan, image, ctx: WorkContext, render_seconds: float,
                safety: SafetyVerdict | None = None, rescore=None,
                made: Reproducibility | None = None) -> ImageResult:
    """Encode and upload (create-only) a rendered image with its safety verdict, or take the earlier attempt's
    object and its verdict; record the variant (fenced on the job's lease). A flagged image's blurred rendition
    goes up first, so an original never exists without it. `rescore(image) -> verdict` scores an earlier
    attempt's object that carries no verdict (uploaded before the checker existed)."""
    spec = job.request
    assert isinstance(spec, ImageJobSpec)
    stored = plan.stored
    if stored is None:
        assert safety is not None, "an image is never uploaded unscored"
        if safety.flagged:
            ctx.media.put_once(safety.blurred_object, _png(blurred(image, ctx.settings.safety_blur_radius)),
                               "image/png")
        stored = ctx.media.put_once(plan.object_name, _png(image), "image/png", verdict_metadata(safety))
        ctx.failpoints.hit(failpoints.AFTER_UPLOAD, job_id=job.job_id)
    safety = verdict_from_metadata(stored.metadata) or safety
    if safety is None and rescore is not None:
        from PIL import Image

        earlier = Image.open(io.BytesIO(ctx.media.read(plan.object_name)))
        safety = rescore(earlier)
        if safety.flagged:
            ctx.media.put_once(safety.blurred_object, _png(blurred(earlier, ctx.settings.safety_blur_radius)),
                               "image/png")
    width, height = plan.render.width, plan.render.height
    created_at = utcnow()
    ctx.store.save_variant(
        job.job_id,
        VariantDoc(
            variant_id=spec.variant_id, pk=spec.pk, soul_id=spec.soul_id, variant_index=spec.variant_index,
            object=plan.object_name, width=width, height=height, seed=spec.seed, bytes=stored.size,
            job_id=job.job_id, cue=spec.cue, place=spec.place, created_at=created_at, safety=safety,
            reproducibility=made,
        ),
    )
    ctx.failpoints.hit(failpoints.AFTER_VARIANT_WRITE, job_id=job.job_id)
    return ImageResult(
        variant_id=spec.variant_id, pk=spec.pk, object=plan.object_name, width=width, height=height, seed=spec.seed,
        bytes=stored.size, render_seconds=round(render_seconds, 4), created_at=created_at, safety=safety,
        reproducibility=made,
    )
