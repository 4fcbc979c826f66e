"""One animation job: the variant's image through Stable Video Diffusion, encoded to GIF / MP4 / WebP, each
uploaded create-only to `videos/{variant_id}/{job_id}.{fmt}`.

Idempotent like image jobs: output names are fixed by the job id, and when every output of an earlier attempt is
already in the bucket the render is skipped. Progress spans the denoising steps (5-80 %) and the encoding; a
cancel stops the work at the next step."""

from __future__ import annotations

import io
import time

from PIL import Image

from gpu_runner.stages.image_job import WorkContext, capped
from gpu_runner.stages.progress import ProgressReporter
from schemas import names
from schemas.jobs import JobDoc, VideoJobSpec, VideoOutput, VideoResult

CONTENT_TYPES = {"gif": "image/gif", "mp4": "video/mp4", "webp": "image/webp"}


def animation_size(ctx: WorkContext) -> tuple[int, int, int]:
    """Width, height and steps: the seed's SVD_IMAGE_WIDTH/HEIGHT for real weights; small for the tiny model."""
    s = ctx.settings
    if not ctx.models.tiny_svd:
        return s.svd_image_width, s.svd_image_height, s.svd_steps
    return capped(s.svd_image_width, s.svd_image_height, s.svd_steps, s.tiny_svd_max_side, s.tiny_svd_max_steps)


def run_video_job(job: JobDoc, ctx: WorkContext, progress: ProgressReporter) -> VideoResult:
    spec = job.request
    assert isinstance(spec, VideoJobSpec)
    started = time.perf_counter()
    targets = {fmt: names.video_object(spec.variant_id, job.job_id, fmt) for fmt in spec.formats}
    existing = {fmt: ctx.media.existing(name) for fmt, name in targets.items()}
    if all(existing.values()):  # an earlier attempt uploaded everything before it died
        stored = existing
    else:
        stored = _render_and_upload(job, spec, ctx, progress, targets)
    outputs = tuple(
        VideoOutput(format=fmt, object=targets[fmt], content_type=CONTENT_TYPES[fmt], bytes=stored[fmt].size)
        for fmt in spec.formats
    )
    return VideoResult(
        variant_id=spec.variant_id, num_frames=spec.num_frames, fps=spec.fps, outputs=outputs,
        render_seconds=round(time.perf_counter() - started, 4),
    )


def _render_and_upload(job: JobDoc, spec: VideoJobSpec, ctx: WorkContext, progress: ProgressReporter, targets):
    from gpu_runner.stages.encode import encode_all
    from gpu_runner.pipelines.svd import AnimationSpec, render_frames

    progress.stage("loading_source", 0.01)
    source = Image.open(io.BytesIO(ctx.media.read(spec.source_object))).convert("RGB")
    progress.stage("loading_model", 0.03)
    pipe = ctx.models.svd()
    width, height, steps = animation_size(ctx)
    s = ctx.settings
    render_started = time.perf_counter()
    frames = render_frames(
        pipe,
        AnimationSpec(
            image=source, num_frames=spec.num_frames, fps=spec.fps, width=width, height=height, steps=steps,
            motion_bucket_id=s.svd_motion_bucket_id, noise_aug_strength=s.svd_noise_aug_strength,
            decode_chunk_size=s.svd_decode_chunk_size, seed=spec.seed,
        ),
        on_step=lambda done, total: progress.step(done, total, stage="denoising", span=(0.05, 0.8)),
    )
    rendered_in = time.perf_counter() - render_started
    progress.stage("encoding", 0.82)
    encode_started = time.perf_counter()
    media = encode_all(frames, spec.fps, spec.formats)
    encoded_in = time.perf_counter() - encode_started
    ctx.store.record_pace(
        ctx.models.device.name,
        video_seconds_per_frame=rendered_in / spec.num_frames,
        encode_seconds_per_frame=encoded_in / spec.num_frames,
    )
    stored = {}
    for index, item in enumerate(media):
        progress.stage(f"uploading_{item.format}", 0.9 + 0.1 * index / len(media))
        stored[item.format] = ctx.media.put_once(targets[item.format], item.data, item.content_type)
    return stored
