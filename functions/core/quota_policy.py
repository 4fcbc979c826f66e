"""Quota policy as data, and the pure arithmetic behind it (no I/O): a tenant's limits (defaults from the
settings, overrides from the keys file), the token bucket (GCRA: one timestamp per bucket), and the UTC windows
that hourly and daily counters live in. `functions/services/quotas.py` keeps the counters in Firestore."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel, ConfigDict, Field


class QuotaOverrides(BaseModel):
    """Per-tenant overrides from the keys file; an absent field keeps the deployment default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_second: float | None = Field(default=None, gt=0, le=100_000)
    burst: int | None = Field(default=None, ge=1, le=1_000_000)
    jobs_per_hour: int | None = Field(default=None, ge=0)
    gpu_seconds_per_day: float | None = Field(default=None, ge=0)
    variants_per_prompt_per_user_per_day: int | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class Quota:
    """One tenant's limits."""

    requests_per_second: float
    burst: int
    jobs_per_hour: int
    gpu_seconds_per_day: float
    variants_per_prompt_per_user_per_day: int

    def with_overrides(self, overrides: QuotaOverrides) -> Quota:
        return replace(self, **{k: v for k, v in overrides.model_dump().items() if v is not None})


@dataclass(frozen=True)
class BucketDecision:
    allowed: bool
    tat: float  # the bucket's new "theoretical arrival time" (seconds since the epoch)
    retry_after: float  # seconds until one more request fits (0 when allowed)


def gcra(tat: float | None, now: float, rate: float, burst: int) -> BucketDecision:
    """Token bucket as GCRA: `rate` requests per second on average, up to `burst` at once. The whole state is
    one number, so a bucket is one small document updated with a precondition."""
    interval = 1.0 / rate
    tolerance = interval * (burst - 1)
    start = max(tat if tat is not None else now, now)
    if start - now > tolerance:
        return BucketDecision(False, start, start - now - tolerance)
    return BucketDecision(True, start + interval, 0.0)


def hour_window(now: datetime) -> tuple[str, float]:
    """The UTC hour `now` is in (as a counter key) and the seconds until it ends."""
    start = now.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return start.strftime("%Y%m%d%H"), (start + timedelta(hours=1) - now).total_seconds()


def day_window(now: datetime) -> tuple[datetime, str, float]:
    """The UTC day `now` is in: its start, its key and the seconds until it ends."""
    start = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start.strftime("%Y%m%d"), (start + timedelta(days=1) - now).total_seconds()


@dataclass(frozen=True)
class Grant:
    granted: int  # tokens taken from the bucket (0: none fits now)
    tat: float  # the bucket's new theoretical arrival time
    retry_after: float  # seconds until one more token fits (0 when some were granted)


def gcra_take(tat: float | None, now: float, rate: float, burst: int, want: int) -> Grant:
    """Take up to `want` tokens at once from a GCRA bucket (an instance leasing its share for the next moments);
    `gcra` is the case `want == 1`. Never more than the bucket holds now, so leases never exceed the tenant's
    rate and burst summed over every instance."""
    interval = 1.0 / rate
    tolerance = interval * (burst - 1)
    start = max(tat if tat is not None else now, now)
    room = tolerance - (start - now)
    if room < 0:
        return Grant(0, start, -room)
    granted = min(max(1, want), int(room / interval + 1e-9) + 1)
    return Grant(granted, start + granted * interval, 0.0)


def lease_size(observed_rate: float, lease_s: float, cap: int) -> int:
    """How many tokens an instance leases at once: what it expects to spend within a lease (at least one, at most
    `cap`), so a slow tenant's instance holds no tokens another instance could use."""
    return max(1, min(cap, int(observed_rate * lease_s + 0.999)))
