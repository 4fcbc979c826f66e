"""When to send a request again, and after how long: pure rules, no I/O. A call is retried only when sending
it twice is safe (a read, a delete, or a POST with an `Idempotency-Key`), only for answers that mean "busy or
briefly down" (429, 502, 503, 504) or for no answer at all, and never past the attempts or the overall budget.
`Retry-After` wins over the backoff when the server sends one."""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts the first try; backoff doubles from `backoff_s` up to `max_backoff_s`, with full
    jitter; a `Retry-After` above `max_retry_after_s` is not waited for (the error is raised instead)."""

    max_attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0

    def delay(self, attempt: int, *, status: int | None, retry_after: float | None, idempotent: bool,
              rng: random.Random | None = None) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to stop (attempt counts from 1).
        `status` is None when there was no answer (connection refused, timeout)."""
        if not idempotent or attempt >= self.max_attempts:
            return None
        if status is not None and status not in RETRYABLE_STATUSES:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after_s else None
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


NO_RETRIES = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())
