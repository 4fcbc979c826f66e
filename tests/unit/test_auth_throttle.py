"""Failed authentication per source (functions/http/auth_throttle.py): a burst then a steady rate, a bounded
table, sources that cannot be multiplied by rotating IPv6 addresses within one /64."""

from __future__ import annotations

import pytest


def test_the_failed_auth_table_is_bounded():
    from functions.http.auth_throttle import FailedAuthLimiter, source_of

    now = [0.0]
    limiter = FailedAuthLimiter(burst=2, per_minute=60, max_sources=100, clock=lambda: now[0])
    for n in range(10_000):
        limiter.failed(f"10.0.{n // 250}.{n % 250}")
    assert len(limiter) == 100
    limiter.failed("198.51.100.1")
    assert limiter.wait("198.51.100.1") == 0.0  # within the burst
    limiter.failed("198.51.100.1")
    assert limiter.wait("198.51.100.1") == pytest.approx(1.0)  # the burst is spent
    now[0] = 1.0
    assert limiter.wait("198.51.100.1") == 0.0  # one more try per second
    # An IPv6 subscriber's whole /64 is one source: rotating addresses within it gains nothing.
    assert source_of("2001:4860:1:2::5", {}, 0) == source_of("2001:4860:1:2:ffff::9", {}, 0)
    assert source_of("10.0.0.1", {"X-Forwarded-For": "1.2.3.4, 5.6.7.8"}, 1) == "5.6.7.8"
