"""The safety-check stage: after the render and before any upload, every rendered image of a batch is scored by the
checker in one call (pipelines/safety.py), on the render thread (the checker shares the device). Each job gets its
`SafetyVerdict` and its share of the checker's device time; a flagged image also gets a blurred rendition, uploaded
before the original by the finish stage (`image_job.store_image`).

The verdict is a fact about the image, not about a tenant: variants are shared between tenants, so the runner scores
every image whatever anybody's policy, and the functions apply the asking tenant's content policy on delivery. The
verdict travels with the original object as custom metadata (one create-only request), so a re-run that finds the
object of an earlier attempt finds its verdict too. A checker that fails fails the batch's jobs like a failed render
(they retry): an unscored image is never uploaded."""

from __future__ import annotations

import time

import structlog
from PIL import Image, ImageFilter

from gpu_runner.stages.records import Ticket, WorkContext
from schemas import names
from schemas.jobs import ImageJobSpec
from schemas.safety import SafetyVerdict

log = structlog.get_logger(__name__)

METADATA_KEY = "soul-safety"  # the original image object's custom metadata: the verdict as JSON


def verdict_for(score: float, threshold: float, model: str, spec: ImageJobSpec) -> SafetyVerdict:
    """Pure: the verdict on one score (flagged strictly above the threshold), naming the blurred rendition."""
    flagged = score > threshold
    blurred = names.blurred_image_object(spec.soul_id, spec.pk, spec.variant_id) if flagged else None
    return SafetyVerdict(flagged=flagged, score=score, threshold=threshold, model=model, blurred_object=blurred)


def blurred(image: Image.Image, radius_at_1024: float) -> Image.Image:
    """The rendition policy `blur` serves: a Gaussian blur strong enough that nothing is recognizable, scaled
    with the image so a small image is blurred as much as a large one."""
    radius = max(2.0, radius_at_1024 * max(image.size) / 1024)
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def verdict_metadata(verdict: SafetyVerdict) -> dict[str, str]:
    return {METADATA_KEY: verdict.model_dump_json()}


def verdict_from_metadata(metadata: dict[str, str] | None) -> SafetyVerdict | None:
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return None
    try:
        return SafetyVerdict.model_validate_json(raw)
    except ValueError:
        log.warning("safety_metadata_unreadable")
        return None


class SafetyStage:
    def __init__(self, work: WorkContext):
        self._work = work

    def check(self, batch: list[Ticket]) -> None:
        """Score the batch's rendered images together; each ticket ends with its verdict, or its own error."""
        scored = [t for t in batch if t.error is None and t.image is not None]
        if not scored:
            return
        try:
            scores, name, elapsed = self.score([t.image for t in scored])
        except Exception as exc:  # noqa: BLE001 - no verdict, no upload: the jobs fail like a failed render
            for ticket in scored:
                ticket.error = ticket.error or exc
            return
        threshold = self._work.settings.safety_threshold
        for ticket, score in zip(scored, scores, strict=True):
            spec = ticket.job.request
            assert isinstance(spec, ImageJobSpec)
            ticket.safety = verdict_for(score, threshold, name, spec)
            ticket.safety_seconds = elapsed / len(scored)
        log.info("batch_checked", jobs=[t.job.job_id for t in scored], flagged=sum(t.safety.flagged for t in scored),
                 seconds=round(elapsed, 4))

    def score(self, images: list[Image.Image]) -> tuple[list[float], str, float]:
        """Scores of `images` (one checker call), the checker's name and the seconds it took."""
        from gpu_runner.pipelines.safety import score_images  # deferred: loads torch

        checker = self._work.models.checker()
        started = time.perf_counter()
        scores = score_images(checker, images)
        return scores, checker.name, time.perf_counter() - started
