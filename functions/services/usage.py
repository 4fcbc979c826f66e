"""GPU-seconds on the functions side: counting dedup hits, and the device-time figures of `/tasks/stats/summary`.

The runner writes each job's `metrics.gpu_seconds` (its share of a batch); Firestore sums and averages them in
aggregation queries, so the totals cover every job without reading one. A dedup hit (an image request answered
with an existing variant) is a render the GPU did not do: counted in memory per instance and flushed to a sharded counter off the request
path (`BufferedCounter`), and valued at the
measured mean GPU-seconds of an image job. The arithmetic is `gpu_stats`, a pure function."""

from __future__ import annotations

import structlog

from functions.adapters.firestore.counters import BufferedCounter, ShardedCounter
from functions.adapters.firestore.jobs import JobStore
from schemas.api import GpuStats

log = structlog.get_logger(__name__)


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
    def __init__(self, store: JobStore, dedup_hits: BufferedCounter | ShardedCounter):
        self._store = store
        self._hits = dedup_hits

    def record_dedup_hit(self) -> None:
        """Best effort: the user's answer matters more than a statistic, so a failed count is logged, not raised."""
        try:
            self._hits.increment()
        except Exception:  # noqa: BLE001 - a statistic never fails an answer
            log.warning("dedup_hit_not_counted", exc_info=True)

    def summary(self) -> GpuStats:
        totals = self._store.gpu_totals()
        return gpu_stats(
            total=float(totals["total"]),
            image_total=float(totals["image_total"]),
            rendered=totals["rendered"],
            mean_per_image=None if totals["mean"] is None else float(totals["mean"]),
            hits=self._hits.total(),
        )
