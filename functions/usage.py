"""GPU-seconds on the functions side: counting dedup hits, and the device-time figures of `/tasks/stats/summary`.

The runner writes each job's `metrics.gpu_seconds` (its share of a batch); Firestore sums and averages them in
aggregation queries, so the totals cover every job without reading one. A dedup hit (an image request answered
with an existing variant) is a render the GPU did not do: counted in a sharded counter, and valued at the
measured mean GPU-seconds of an image job. The arithmetic is `gpu_stats`, a pure function."""

from __future__ import annotations

import structlog
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.base_query import FieldFilter

from functions.counters import ShardedCounter
from functions.store import Store
from schemas.api import GpuStats
from schemas.jobs import JobStatus, JobType

log = structlog.get_logger(__name__)

GPU_SECONDS = "metrics.gpu_seconds"


def gpu_stats(
    *, total: float, image_total: float, rendered: int, mean_per_image: float | None, hits: int
) -> GpuStats:
    delivered = rendered + hits
    return GpuStats(
        total_gpu_seconds=round(total, 3),
        image_gpu_seconds=round(image_total, 3),
        rendered_images=rendered,
        dedup_hits=hits,
        gpu_seconds_per_image_job=None if mean_per_image is None else round(mean_per_image, 3),
        gpu_seconds_per_delivered_image=round(image_total / delivered, 3) if delivered else None,
        gpu_seconds_saved_by_dedup=None if mean_per_image is None else round(hits * mean_per_image, 3),
    )


class GpuUsage:
    def __init__(self, store: Store, dedup_hits: ShardedCounter):
        self._store = store
        self._hits = dedup_hits

    def record_dedup_hit(self) -> None:
        """Best effort: the user's answer matters more than a statistic, so a failed count is logged, not raised."""
        try:
            self._hits.increment()
        except (gexc.GoogleAPICallError, gexc.RetryError):
            log.warning("dedup_hit_not_counted", exc_info=True)

    def summary(self) -> GpuStats:
        jobs = self._store.jobs()
        images = jobs.where(filter=FieldFilter("type", "==", JobType.IMAGE.value))
        rendered = images.where(filter=FieldFilter("status", "==", JobStatus.SUCCEEDED.value))
        total = self._aggregate(jobs.sum(GPU_SECONDS, alias="v"))
        image_total = self._aggregate(images.sum(GPU_SECONDS, alias="v"))
        counts = rendered.count(alias="n").avg(GPU_SECONDS, alias="mean").get(**self._store.deadline)[0]
        by_alias = {result.alias: result.value for result in counts}
        return gpu_stats(
            total=float(total or 0.0),
            image_total=float(image_total or 0.0),
            rendered=int(by_alias["n"]),
            mean_per_image=None if by_alias["mean"] is None else float(by_alias["mean"]),
            hits=self._hits.total(),
        )

    def _aggregate(self, query) -> float | None:
        return query.get(**self._store.deadline)[0][0].value
