"""Animation requests: validate what to animate, then make sure exactly one job animates a given (variant,
frames, fps, formats), however often and however concurrently it is asked for.

`image_path` (from the original app) is accepted only as the object name of a known variant's image in this
project's bucket; it is matched against a strict pattern before anything is looked up, and never opened as a
path or fetched as a URL."""

from __future__ import annotations

import hashlib
import re

from functions.adapters.firestore.jobs import JobStore
from functions.adapters.firestore.prompts import PromptStore
from functions.adapters.pubsub import Publisher
from functions.core import content_policy, estimates
from functions.core.errors import ContentRefused, InvalidInput, NotFound
from functions.core.tenants import DEFAULT_TENANT
from functions.services.jobs import Interest, ensure_job
from functions.services.quotas import QuotaService
from functions.services.tasks import TaskService
from functions.settings import FunctionsSettings
from schemas._base import utcnow
from schemas.api import VideoAccepted
from schemas.documents import VariantDoc
from schemas.jobs import JobDoc, JobStatus, JobType, VideoJobSpec

_OBJECT = r"images/[a-z0-9][a-z0-9_-]{0,63}/[0-9a-f]{32}/(?P<variant_id>[0-9A-HJKMNP-TV-Z]{26})\.png"


def variant_id_from_image_path(image_path: str, bucket: str) -> str:
    """The variant id an `image_path` names, or InvalidInput. Pure: reads nothing."""
    pattern = rf"^(?:gs://{re.escape(bucket)}/)?{_OBJECT}$"
    match = re.fullmatch(pattern, image_path)
    if match is None:
        raise InvalidInput(
            f"image_path must name a variant's image in this project's bucket, as "
            f"'images/{{soul_id}}/{{pk_id}}/{{variant_id}}.png' or 'gs://{bucket}/images/...'; "
            "file paths and URLs are not accepted",
            field="image_path",
        )
    return match["variant_id"]


def video_job_id(variant_id: str, num_frames: int, fps: int, formats: tuple[str, ...], retry: int = 0) -> str:
    digest = hashlib.sha256(f"{variant_id}|{num_frames}|{fps}|{','.join(formats)}".encode()).hexdigest()[:32]
    return f"vid-{digest}-0" if retry == 0 else f"vid-{digest}-0-r{retry}"


class VideoService:
    def __init__(
        self, prompts: PromptStore, jobs: JobStore, publisher: Publisher, tasks: TaskService,
        settings: FunctionsSettings, defaults: estimates.EstimateDefaults, quotas: QuotaService,
    ):
        self._prompts = prompts
        self._jobs = jobs
        self._publisher = publisher
        self._tasks = tasks
        self._settings = settings
        self._defaults = defaults
        self._quotas = quotas

    def from_image_path(self, image_path: str, num_frames: int | None, generate_gif: bool, user_id: str | None,
                        tenant: str = DEFAULT_TENANT):
        variant_id = variant_id_from_image_path(image_path, self._settings.bucket)
        variant = self._prompts.variant(variant_id)
        if variant is None or image_path.removeprefix(f"gs://{self._settings.bucket}/") != variant.object:
            raise InvalidInput("image_path does not name a known variant's image", field="image_path")
        return self._animate(variant, num_frames, generate_gif, user_id, tenant)

    def from_variant(self, variant_id: str, num_frames: int | None, generate_gif: bool, user_id: str | None,
                     tenant: str = DEFAULT_TENANT):
        variant = self._prompts.variant(variant_id)
        if variant is None:
            raise NotFound(f"no variant '{variant_id}'", field="variant_id")
        return self._animate(variant, num_frames, generate_gif, user_id, tenant)

    def _refuse_what_may_not_be_animated(self, variant: VariantDoc, tenant: str) -> None:
        """An animation shows the source image's pixels: a tenant whose policy blurs or withholds a flagged image
        may not animate one, nor one whose cue holds a term it blocks (422), whoever else may."""
        viewer = self._tasks.viewer(tenant)
        if variant.safety is not None and variant.safety.flagged and not content_policy.sees_flagged_originals(viewer):
            raise ContentRefused(f"the variant was flagged by the safety checker and this tenant's content policy "
                                 f"is '{viewer.policy}': it cannot be animated", field="variant_id")
        if self._tasks.blocks(tenant, variant.cue):
            raise ContentRefused(f"the variant's cue contains a term this tenant's content policy blocks (blocked "
                                 f"terms, policy '{viewer.policy}'); nothing was queued", field="variant_id")

    def _animate(
        self, variant: VariantDoc, num_frames: int | None, generate_gif: bool, user_id: str | None, tenant: str
    ) -> tuple[int, VideoAccepted]:
        self._refuse_what_may_not_be_animated(variant, tenant)
        frames = num_frames or self._settings.svd_num_frames
        fps = self._settings.svd_fps
        formats = ("gif", "mp4", "webp") if generate_gif else ("mp4", "webp")
        spec = VideoJobSpec(
            variant_id=variant.variant_id, source_object=variant.object, num_frames=frames, fps=fps,
            formats=formats, seed=variant.seed, cue=variant.cue,
        )
        estimate = estimates.video_estimate(self._jobs.runner_stats(), frames, self._defaults)
        job = ensure_job(
            self._jobs,
            self._publisher,
            lambda retry: JobDoc(
                job_id=video_job_id(spec.variant_id, spec.num_frames, spec.fps, spec.formats, retry),
                type=JobType.VIDEO, request=spec, requested_by=user_id, soul_id=variant.soul_id,
                created_at=utcnow(), updated_at=utcnow(),
            ),
            Interest(tenant, user_id),
            admit=lambda: self._quotas.admit_job(tenant, gpu_seconds=estimate.estimated_seconds),
        )
        task = self._tasks.view(job, tenant) if job.status == JobStatus.SUCCEEDED else None
        answer = VideoAccepted(
            status=job.status, task_id=job.job_id, variant_id=variant.variant_id, num_frames=frames,
            formats=list(formats), status_url=f"{self._settings.public_base_url}/tasks/{job.job_id}",
            estimated_seconds=estimate.estimated_seconds, result=task.result if task else None,
        )
        return (200 if job.status == JobStatus.SUCCEEDED else 202), answer
