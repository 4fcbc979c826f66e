"""GPU-seconds on the functions side: counting dedup hits, the device-time figures of `/tasks/stats/summary`, and a
tenant's own usage by day (`GET /usage`).

The runner adds each finished job to the usage rollups (soul_common/rollups.py: per tenant and day, and the
deployment's totals), so every figure here reads a few small documents however many jobs there were. A dedup hit
(an image request answered with an existing variant) is a render the GPU did not do: counted in the deployment's
sharded counter (added up in memory per instance and flushed off the request path: `BufferedCounter`) and,
buffered, in the tenant's day; it is valued at the measured mean GPU-seconds of a rendered image when its
flush writes it (a past day's saving stays as written). The arithmetic is `gpu_stats` and `usage_report`, pure functions."""

from __future__ import annotations

from datetime import date, timedelta

import structlog

from functions.adapters.firestore.counters import BufferedCounter, ShardedCounter
from functions.adapters.firestore.usage import UsageStore
from schemas._base import utcnow
from schemas.api import GpuStats, Usage, UsageDay
from soul_common.rollups import mean_per_image

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


def saved_by_dedup(day: dict[str, float], mean: float | None) -> float | None:
    """A day's GPU-seconds saved by dedup: as valued when its hits were recorded, and hits recorded unvalued (before
    values were kept, or with no render yet) at today's `mean`."""
    if not day["dedup_hits_valued"] and mean is None:
        return None  # nothing rendered yet: a hit has no value to speak of
    unvalued = max(0.0, day["dedup_hits"] - day["dedup_hits_valued"])
    return round(day["dedup_gpu_seconds_saved"] + unvalued * (mean or 0.0), 3)


def usage_report(tenant: str, by_day: dict[str, dict[str, float]], mean: float | None) -> Usage:
    days = [UsageDay(day=day, jobs=int(s["jobs"]), images=int(s["images"]), gpu_seconds=round(s["gpu_seconds"], 3),
                     image_gpu_seconds=round(s["image_gpu_seconds"], 3), dedup_hits=int(s["dedup_hits"]),
                     gpu_seconds_saved_by_dedup=saved_by_dedup(s, mean))
            for day, s in by_day.items()]
    return Usage(tenant=tenant, days=days, gpu_seconds=round(sum(d.gpu_seconds for d in days), 3),
                 images=sum(d.images for d in days), dedup_hits=sum(d.dedup_hits for d in days))


class GpuUsage:
    def __init__(self, dedup_hits: BufferedCounter | ShardedCounter, rollups: UsageStore):
        self._hits = dedup_hits
        self._rollups = rollups

    def record_dedup_hit(self, tenant: str) -> None:
        """Best effort: the user's answer matters more than a statistic, so a failed count is logged, not raised."""
        try:
            self._hits.increment()
            self._rollups.add_dedup_hit(tenant, utcnow())
        except Exception:  # noqa: BLE001 - a statistic never fails an answer
            log.warning("dedup_hit_not_counted", exc_info=True)

    def gpu_seconds_today(self, tenant: str) -> float:
        return self._rollups.gpu_seconds_on(tenant, utcnow().date().isoformat())

    def summary(self) -> GpuStats:
        totals = self._rollups.totals()
        return gpu_stats(
            total=totals["gpu_seconds"],
            image_total=totals["image_gpu_seconds"],
            rendered=int(totals["rendered_images"]),
            mean_per_image=mean_per_image(totals),
            hits=self._hits.total(),
        )

    def usage(self, tenant: str, days: int, today: date | None = None) -> Usage:
        """The tenant's own rollups for the last `days` UTC days (today included), days without work left out."""
        self._rollups.flush()  # this instance's buffered hits first, so a tenant sees its own latest requests
        last = today or utcnow().date()
        by_day = self._rollups.days(tenant, last - timedelta(days=days - 1), last)
        return usage_report(tenant, by_day, mean_per_image(self._rollups.totals()))
