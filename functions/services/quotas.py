"""Per-tenant rate limits and quotas, enforced the same by every function instance because their counters live
in Firestore under `tenants/{tenant}/...`:

- requests per second: a token bucket (GCRA, `quota_policy.gcra_take`) split over `shards` documents, each with
  its share of the rate, updated with a precondition (so concurrent instances never both spend the same token);
  instances lease tokens from it in batches and spend them in memory (functions/services/rate.py), so a request
  does no Firestore call unless its instance ran dry;
- jobs created per hour: a sharded counter per UTC hour, reserved before a job is created (one shard written,
  the shards summed by one aggregation), refunded when another creator won the race;
- GPU-seconds per day: what the day's finished jobs cost (the tenant's usage rollup: soul_common/rollups.py, one
  aggregation) plus what the jobs in flight reserved at creation (their estimate, on a sharded day counter:
  soul_common/reservations.py, one aggregation), reserved before a job is created like the hourly count, so a
  burst of concurrent creations passes its budget by at most about one job;
- new variants per cue per end user per day: one counter per (user, cue, UTC day), the cue keyed without the
  style, identity and pins (`keys.cue_key`): pinning another seed or scheduler is still the same cue.

Every refusal is a 429 with `Retry-After` in the error shape. Counter documents carry `expires_at` for a
Firestore TTL policy."""

from __future__ import annotations

import hashlib
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from functions.adapters.firestore.jobs import JobStore
from functions.adapters.firestore.quotas import QuotaStore
from functions.core.errors import TooManyRequests
from functions.core.quota_policy import Quota, day_window, gcra_take, hour_window
from functions.core.tenants import KeyRing
from functions.services.rate import LocalRateLimiter
from schemas._base import utcnow
from schemas.jobs import GpuReservation
from soul_common import reservations

Refund = Callable[[], None]


@dataclass(frozen=True)
class Admission:
    """A job creation admitted: how to take it back if the job is not created after all, and the GPU-seconds it
    reserved (recorded on the job, so whoever ends the job takes them back)."""

    refund: Refund
    gpu_reservation: GpuReservation | None = None


class QuotaService:
    def __init__(self, counters: QuotaStore, jobs: JobStore, defaults: Quota, ring: KeyRing, *, shards: int = 4,
                 enabled: bool = True, rate_lease_s: float = 2.0, job_counter_shards: int = 16):
        self._counters = counters
        self._jobs = jobs
        self._defaults = defaults
        self._ring = ring
        self._shards = max(1, shards)
        self.enabled = enabled
        self._rate = LocalRateLimiter(self._lease, lease_s=rate_lease_s)
        # The jobs-per-hour counter is written at each creation: one tenant creating 50 jobs/s puts ~3 writes/s
        # on each of 16 shards (each creation sums them with one aggregation: one read).
        self._job_shards = max(1, job_counter_shards)
        self._job_turn = itertools.count(random.randrange(self._job_shards))
        # A GPU-seconds reservation shard is written twice per job (its creation, its end): twice the shards.
        self._gpu_shards = 2 * self._job_shards
        self._gpu_turn = itertools.count(random.randrange(self._gpu_shards))

    def quota(self, tenant: str) -> Quota:
        return self._defaults.with_overrides(self._ring.quota_overrides(tenant))

    # ---- requests per second -----------------------------------------------------------------------------------

    def check_rate(self, tenant: str) -> None:
        """Spend one token of the tenant's rate (in memory, from this instance's lease of the shared bucket:
        functions/services/rate.py), or raise a 429 saying when the next one is due."""
        if not self.enabled:
            return
        quota = self.quota(tenant)
        wait = self._rate.allow(tenant, max(1, quota.burst // self._shards))
        if wait is not None:
            raise TooManyRequests(
                f"tenant '{tenant}' is over its rate limit of {quota.requests_per_second:g} requests/s "
                f"(burst {quota.burst}); retry later",
                retry_after=max(wait, 0.001),
            )

    def _lease(self, tenant: str, want: int) -> tuple[int, float]:
        """Take up to `want` tokens from the tenant's shared bucket: (granted, seconds until one fits if none)."""
        quota = self.quota(tenant)
        rate = quota.requests_per_second / self._shards
        burst = max(1, quota.burst // self._shards)
        first = random.randrange(self._shards)
        waits: list[float] = []
        for attempt in range(2 * self._shards):
            tat, version = self._counters.bucket(tenant, (first + attempt) % self._shards)
            grant = gcra_take(tat, time.time(), rate, burst, want)
            if not grant.granted:
                waits.append(grant.retry_after)
                if len(waits) >= self._shards:
                    break
                continue
            if self._counters.spend(version, grant.tat, utcnow() + timedelta(hours=1)):
                return grant.granted, 0.0
            # another instance leased from this shard first: try the next shard
        return 0, min(waits) if waits else 1.0

    # ---- GPU work ----------------------------------------------------------------------------------------------

    def admit_job(self, tenant: str, *, gpu_seconds: float, user_key: str | None = None,
                  cue: str | None = None) -> Admission:
        """Reserve one job creation for `tenant` (one new variant of the cue keyed `cue` for `user_key`, when
        given, and the job's estimated `gpu_seconds` against the day's budget); raise a 429 when a quota is used
        up. Returns the admission, whose refund takes it all back for a creation that did not happen."""
        if not self.enabled:
            return Admission(lambda: None)
        quota = self.quota(tenant)
        now = utcnow()
        refund, reservation = self._reserve_gpu_seconds(tenant, quota, now, gpu_seconds)
        refunds: list[Refund] = [refund]

        def refund_all() -> None:
            for refund in refunds:
                refund()

        try:
            refunds.append(self._reserve_job(tenant, quota, now))
            if user_key is not None and cue is not None:
                refunds.append(self._reserve_variant(tenant, quota, now, user_key, cue))
        except TooManyRequests:
            refund_all()
            raise
        return Admission(refund_all, reservation)

    def _reserve_job(self, tenant: str, quota: Quota, now: datetime) -> Refund:
        hour, left = hour_window(now)
        group = f"jobs-{hour}"
        mine = f"{group}-{next(self._job_turn) % self._job_shards}"  # round robin: an even spread, not random peaks
        self._counters.add(tenant, mine, 1, expires_at=now + timedelta(hours=2), group=group)
        total = self._counters.total(tenant, group)

        def refund() -> None:
            self._counters.add(tenant, mine, -1)

        if total > quota.jobs_per_hour:
            refund()
            raise TooManyRequests(
                f"tenant '{tenant}' created its {quota.jobs_per_hour} jobs of this hour; retry after the hour",
                retry_after=left, code="quota_exceeded",
            )
        return refund

    def _reserve_variant(self, tenant: str, quota: Quota, now: datetime, user_key: str, cue: str) -> Refund:
        _, day, left = day_window(now)
        digest = hashlib.sha256(f"{user_key}|{cue}".encode()).hexdigest()[:32]
        name = f"variants-{day}-{digest}"
        count = self._counters.add(tenant, name, 1, expires_at=now + timedelta(days=2))
        if count is None:  # the write did not report the value: read it back
            count = self._counters.value(tenant, name)

        def refund() -> None:
            self._counters.add(tenant, name, -1)

        if count > quota.variants_per_prompt_per_user_per_day:
            refund()
            raise TooManyRequests(
                f"this user asked for {quota.variants_per_prompt_per_user_per_day} new variants of this cue today; "
                "that is the daily limit",
                retry_after=left, code="quota_exceeded", field="cue",
            )
        return refund

    def _reserve_gpu_seconds(self, tenant: str, quota: Quota, now: datetime,
                             seconds: float) -> tuple[Refund, GpuReservation]:
        """Reserve a job's estimate on the day's counter, then refuse when the day's finished work and the other
        jobs in flight already use the budget (reserve first, then sum: concurrent creators see each other)."""
        used = self._check_gpu_seconds(tenant, quota, now)  # spent already: refused without a write
        _, day, left = day_window(now)
        millis = max(1, round(seconds * 1000))
        group = f"gpu-{day}"
        name = f"{group}-{next(self._gpu_turn) % self._gpu_shards}"
        self._counters.add(tenant, name, millis, expires_at=now + reservations.KEEP, group=group)

        def refund() -> None:
            self._counters.add(tenant, name, -millis)

        in_flight = max(0.0, (self._counters.total(tenant, group) - millis) / 1000)
        if used + in_flight >= quota.gpu_seconds_per_day:
            refund()
            # Work in flight gives its reservation back as it ends: worth asking again once some of it has.
            wait = min(left, max(5.0, in_flight))
            raise TooManyRequests(
                f"tenant '{tenant}' used {used:.0f} of its {quota.gpu_seconds_per_day:g} GPU-seconds today and has "
                f"{in_flight:.0f} more in flight", retry_after=wait, code="quota_exceeded",
            )
        return refund, GpuReservation(tenant=tenant, counter=name, millis=millis)

    def _check_gpu_seconds(self, tenant: str, quota: Quota, now: datetime) -> float:
        """The GPU-seconds the tenant's finished jobs used today; a 429 when they use up the day's budget."""
        start, _, left = day_window(now)
        used = self.gpu_seconds_since(tenant, start)
        if used >= quota.gpu_seconds_per_day:
            raise TooManyRequests(
                f"tenant '{tenant}' used {used:.0f} of its {quota.gpu_seconds_per_day:g} GPU-seconds today",
                retry_after=left, code="quota_exceeded",
            )
        return used

    def gpu_seconds_since(self, tenant: str, start: datetime) -> float:
        """GPU-seconds the runner recorded on jobs this tenant created (and that finished) since `start`."""
        return self._jobs.gpu_seconds_since(tenant, start.astimezone(timezone.utc))
