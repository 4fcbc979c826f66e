"""Issue 17's pure rules: leasing tokens from a GCRA bucket, the in-memory rate limiter that spends them, the
constant-read variant choice over `prompts/{pk}.variant_ids`, the buffered dedup counter and the paced progress
writer (the store it writes is on the emulators in tests/integration/test_scale_rules.py)."""

from __future__ import annotations

import threading
import time

from functions.adapters.firestore.counters import BufferedCounter
from functions.core.quota_policy import gcra, gcra_take, lease_size
from functions.core.variants import first_unseen_id, next_index_of
from functions.services.rate import LocalRateLimiter
from gpu_runner.stages.progress import JobSignals, ProgressReporter


def test_a_lease_never_takes_more_than_the_bucket_holds():
    full = gcra_take(None, 1000.0, rate=10.0, burst=20, want=50)
    assert full.granted == 20 and full.retry_after == 0.0  # the whole burst, not what was wanted
    empty = gcra_take(full.tat, 1000.0, rate=10.0, burst=20, want=5)
    assert empty.granted == 0 and 0 < empty.retry_after <= 0.1 + 1e-9
    later = gcra_take(full.tat, 1000.5, rate=10.0, burst=20, want=50)
    assert later.granted == 5  # half a second at 10/s
    # One token at a time is the plain GCRA.
    assert gcra_take(None, 5.0, 2.0, 4, 1).tat == gcra(None, 5.0, 2.0, 4).tat


def test_lease_size_follows_the_observed_rate():
    assert lease_size(0.0, 2.0, 100) == 1
    assert lease_size(30.0, 2.0, 100) == 60
    assert lease_size(1000.0, 2.0, 100) == 100


class FakeBucket:
    """The shared bucket as `QuotaService._lease` answers: GCRA over a fake clock, counting calls."""

    def __init__(self, clock, rate: float, burst: int):
        self.clock, self.rate, self.burst, self.tat, self.calls = clock, rate, burst, None, 0

    def lease(self, tenant: str, want: int) -> tuple[int, float]:
        self.calls += 1
        grant = gcra_take(self.tat, self.clock(), self.rate, self.burst, want)
        self.tat = grant.tat
        return grant.granted, grant.retry_after


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_instances_sharing_a_bucket_never_admit_more_than_its_rate():
    clock = Clock()
    bucket = FakeBucket(clock, rate=50.0, burst=50)
    instances = [LocalRateLimiter(bucket.lease, lease_s=1.0, clock=clock) for _ in range(3)]
    admitted = 0
    for step in range(600):  # 6 s at 100 requests/s offered, round robin over three instances
        clock.now += 0.01
        if instances[step % 3].allow("acme", cap=50) is None:
            admitted += 1
    assert admitted <= 50 + 50 * 6  # the burst plus the rate, summed over every instance
    assert admitted >= 200  # and most of what the tenant may have
    assert bucket.calls < 600 / 5  # tokens come in leases, not one shared write per request


def test_a_refused_lease_is_remembered_until_retry_after():
    clock = Clock()
    bucket = FakeBucket(clock, rate=1.0, burst=1)
    limiter = LocalRateLimiter(bucket.lease, lease_s=2.0, clock=clock)
    assert limiter.allow("t", cap=1) is None
    wait = limiter.allow("t", cap=1)
    assert wait is not None and wait > 0
    calls = bucket.calls
    for _ in range(20):
        assert limiter.allow("t", cap=1) is not None
    assert bucket.calls == calls  # over its limit, a tenant costs the store nothing more
    clock.now += 1.01
    assert limiter.allow("t", cap=1) is None


def test_concurrent_requests_of_a_dry_instance_wait_for_one_lease():
    started = threading.Event()
    release = threading.Event()
    calls = []

    def slow_lease(tenant: str, want: int) -> tuple[int, float]:
        calls.append(want)
        started.set()
        release.wait(5)
        return 100, 0.0

    limiter = LocalRateLimiter(slow_lease, lease_s=5.0)
    results = []
    threads = [threading.Thread(target=lambda: results.append(limiter.allow("t", cap=100))) for _ in range(10)]
    for thread in threads:
        thread.start()
    started.wait(5)
    time.sleep(0.05)
    release.set()
    for thread in threads:
        thread.join(5)
    assert results == [None] * 10
    assert len(calls) == 1  # one lease served all ten


def test_the_first_unseen_variant_and_the_next_index_from_the_index():
    assert first_unseen_id(["a", "b", "c"], {"a"}) == "b"
    assert first_unseen_id(["a"], {"a"}) is None
    assert next_index_of(set(), []) == 0
    assert next_index_of({0, 1, 3}, ["a", "b", "c"]) == 4
    assert next_index_of(set(), ["a", "b"]) == 2  # an index written before indices were recorded


class CountingShards:
    """Shares ShardedCounter's interface (increment, total)."""

    def __init__(self):
        self.writes, self.value = 0, 0

    def increment(self, by: int = 1) -> None:
        self.writes += 1
        self.value += by

    def total(self) -> int:
        return self.value


def test_the_buffered_counter_writes_once_per_interval_and_loses_nothing():
    shards = CountingShards()
    counter = BufferedCounter(shards, flush_s=60)
    for _ in range(500):
        counter.increment()
    assert shards.writes == 0 and counter.total() == 500  # nothing written on the hit path, all counted
    counter.flush()
    counter.flush()
    assert shards.writes == 1 and shards.value == 500 and counter.total() == 500


def test_the_progress_writer_coalesces_a_burst_of_stages():
    writes = []
    reporter = ProgressReporter(lambda f, s, e: writes.append(s), JobSignals(), min_interval_s=0.0,
                                background=True, min_gap_s=0.3)
    for index in range(20):
        reporter.stage(f"stage-{index}", index / 20)
        time.sleep(0.005)
    time.sleep(0.5)
    reporter.close()
    assert 1 <= len(writes) <= 3, writes  # 20 stage changes within 0.1 s: one write, then the latest
    assert writes[-1] == "stage-19"
