"""Usage rollups: what finished work cost, summed as it finishes, so the GPU-seconds quota, `GET /usage` and the
GPU figures of `/tasks/stats/summary` read a few small documents instead of aggregating ever larger job
collections.

- `usage/{tenant}/days/{day}-{shard}`: one tenant's day (UTC, `day` = "YYYY-MM-DD"): `jobs`, `images` (image
  jobs that succeeded), `gpu_seconds`, `image_gpu_seconds`, `dedup_hits` and what they saved,
  `dedup_gpu_seconds_saved` (each flush values its hits at the deployment's mean GPU-seconds per rendered image
  of that moment, so a past day's saving stays as written; `dedup_hits_valued` counts the hits so valued, and
  hits from before them are valued at read time).
- `usage_totals/{shard}`: the deployment's running totals: `gpu_seconds`, `image_gpu_seconds`, `rendered_images`,
  `rendered_gpu_seconds` (over succeeded image jobs: their mean is the value of a dedup hit).

Writes are server-side increments (never lost to a race) on a shard chosen by the writer (a runner always writes
its own shard, a functions instance its own), so no document is written more often than one writer finishes
work (~1/s at most) however large the fleet. Readers sum the shards: the quota with one aggregation (1 read),
`GET /usage` with one range query over at most days x shards documents, the summary with one aggregation.

A runner adds a job's rollup in the very commit that finishes the job (`add_job` on the finishing batch): a job
is in the sums exactly when it is finished, never lost to a runner dying in between, never counted twice (a
finished job is never finished again). The functions count dedup hits in memory per (tenant, day) and a background
thread adds them every few seconds in one write per pair (`DedupBuffer`): never on the request path."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from datetime import date, datetime, timedelta, timezone

from schemas import names
from soul_common import firestore as fs
from soul_common.flusher import Flusher

USAGE = "usage"
DAYS = "days"
TOTALS = "usage_totals"
TENANT_SHARDS = 8
TOTAL_SHARDS = 64
MAX_DAYS = 92  # the longest window one `GET /usage` reads
FIELDS = ("jobs", "images", "gpu_seconds", "image_gpu_seconds", "dedup_hits", "dedup_gpu_seconds_saved",
          "dedup_hits_valued")
TOTAL_FIELDS = ("gpu_seconds", "image_gpu_seconds", "rendered_images", "rendered_gpu_seconds")


def shard_of(writer: str, shards: int) -> int:
    """A writer's own shard (stable across restarts: the runner id, the instance id)."""
    return int(hashlib.sha256(writer.encode()).hexdigest()[:8], 16) % shards


def day_of(when: datetime) -> str:
    return when.astimezone(timezone.utc).date().isoformat()


def _day_doc(tenant: str, day: str, shard: int) -> fs.DocRef:
    return fs.doc(USAGE, tenant, DAYS, f"{day}-{shard}")


def add_job(batch: fs.Batch, *, tenant: str | None, job_type: str, succeeded: bool, gpu_seconds: float | None,
            finished_at: datetime, writer: str) -> None:
    """Add one finished job to its tenant's day and to the deployment's totals (two increments, in `batch`: the
    commit that finishes the job)."""
    gpu = float(gpu_seconds or 0.0)
    image = job_type == "image"
    rendered = image and succeeded
    day = day_of(finished_at)
    tenant = tenant or "default"
    shard = shard_of(writer, TENANT_SHARDS)
    batch.set(_day_doc(tenant, day, shard), {
        "tenant": tenant, "day": day, "shard": shard, "jobs": fs.increment(1), "images": fs.increment(int(rendered)),
        "gpu_seconds": fs.increment(gpu), "image_gpu_seconds": fs.increment(gpu if image else 0.0),
        "updated_at": finished_at}, merge=True)
    batch.set(fs.doc(TOTALS, str(shard_of(writer, TOTAL_SHARDS))), {
        "gpu_seconds": fs.increment(gpu), "image_gpu_seconds": fs.increment(gpu if image else 0.0),
        "rendered_images": fs.increment(int(rendered)), "rendered_gpu_seconds": fs.increment(gpu if rendered else 0.0),
        "updated_at": finished_at}, merge=True)


def record_dedup(db: fs.Db, *, tenant: str, day: str, hits: int, writer: str, mean: float | None = None) -> None:
    """Add `hits` to a tenant's day, valued at `mean` GPU-seconds each when the deployment has rendered any."""
    shard = shard_of(writer, TENANT_SHARDS)
    valued = {"dedup_gpu_seconds_saved": fs.increment(hits * mean), "dedup_hits_valued": fs.increment(hits)} \
        if mean is not None else {}
    db.set(_day_doc(tenant, day, shard), {"tenant": tenant, "day": day, "shard": shard,
                                          "dedup_hits": fs.increment(hits), **valued}, merge=True)


def mean_per_image(sums: dict[str, float]) -> float | None:
    """The deployment's mean GPU-seconds per rendered image (what one dedup hit saves), None before any."""
    rendered = sums["rendered_images"]
    return sums["rendered_gpu_seconds"] / rendered if rendered else None


def gpu_seconds_on(db: fs.Db, tenant: str, day: str) -> float:
    """A tenant's GPU-seconds of one day: one aggregation over its shards."""
    return db.sum(fs.collection(USAGE, tenant, DAYS).where("day", "==", day), "gpu_seconds")


def days(db: fs.Db, tenant: str, first: date, last: date) -> dict[str, dict[str, float]]:
    """A tenant's rollups by day, shards summed, for the days in [first, last] that have any."""
    if (last - first).days + 1 > MAX_DAYS:
        raise ValueError(f"a usage window is at most {MAX_DAYS} days")
    query = (fs.collection(USAGE, tenant, DAYS).where("day", ">=", first.isoformat())
             .where("day", "<=", last.isoformat()))
    out: dict[str, dict[str, float]] = {}
    for snap in db.stream(query):
        data = snap.data or {}
        sums = out.setdefault(data["day"], dict.fromkeys(FIELDS, 0.0))
        for name in FIELDS:
            sums[name] += float(data.get(name) or 0.0)
    return dict(sorted(out.items()))


def totals(db: fs.Db) -> dict[str, float]:
    """The deployment's totals: one aggregation over the shards."""
    sums = db.aggregate(fs.collection(TOTALS), *(("sum", name, name) for name in TOTAL_FIELDS))
    return {name: float(sums.get(name) or 0.0) for name in TOTAL_FIELDS}


class DedupBuffer:
    """Dedup hits counted in memory per (tenant, day) and added to the rollups by a background flusher every
    `flush_s` (one write per pair per flush): a hit is a request answered from cache, and must neither cost nor
    wait on a write of its own. An instance that dies loses at most one interval of hits (a statistic)."""

    def __init__(self, db: fs.Db, writer: str, *, flush_s: float = 5.0):
        self._db = db
        self._writer = writer
        self._lock = threading.Lock()
        self._hits: Counter = Counter()
        self._flusher = Flusher(self.flush, flush_s, "usage-flush")

    def add(self, tenant: str, when: datetime) -> None:
        with self._lock:
            self._hits[(tenant, day_of(when))] += 1
        self._flusher.start()

    def flush(self) -> None:
        """Write what was counted (a failed write puts the counts back for the next flush)."""
        with self._lock:
            hits, self._hits = self._hits, Counter()
        if not hits:
            return
        failed: Exception | None = None
        try:
            mean = mean_per_image(totals(self._db))  # one aggregation per flush: the value of each hit now
        except Exception as exc:  # noqa: BLE001 - counted unvalued (valued at read time) rather than lost
            mean, failed = None, exc
        for (tenant, day), count in hits.items():
            try:
                record_dedup(self._db, tenant=tenant, day=day, hits=count, writer=self._writer, mean=mean)
            except Exception as exc:  # noqa: BLE001 - every pair is tried; the failed ones wait for the next flush
                failed = exc
                with self._lock:
                    self._hits[(tenant, day)] += count
        if failed is not None:
            raise failed


def window(today: date, days_back: int) -> tuple[date, date]:
    return today - timedelta(days=days_back - 1), today
