"""Issue 17's pure rules: leasing tokens from a GCRA bucket, the in-memory rate limiter that spends them, the
constant-read variant choice over `prompts/{pk}.variant_ids`, the buffered dedup counter and the paced progress
writer (the store it writes is on the emulators in tests/integration/test_scale_rules.py)."""

from __future__ import annotations

import threading
import time

import pytest

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


def test_progress_waits_a_gap_after_the_runners_own_writes_of_the_job():
    """The claim, the variant and the finish are the job document's lifecycle writes; ticks and stage changes
    keep `doc_gap_s` away from them, so a sub-second job's document is never written more than its lifecycle
    writes in one second (Firestore: about one sustained write per second per document)."""
    writes: list[tuple[str, float]] = []
    last = [time.monotonic()]  # the claim, just now
    reporter = ProgressReporter(lambda f, s, e: writes.append((s, time.monotonic())), JobSignals(),
                                min_interval_s=0.0, background=True, min_gap_s=0.0,
                                last_doc_write=lambda: last[0], doc_gap_s=0.4)
    reporter.stage("loading_model", 0.02)
    reporter.stage("denoising", 0.3)
    time.sleep(0.2)
    assert writes == []  # within the gap: nothing, the newest value waits
    time.sleep(0.35)
    assert [s for s, _ in writes] == ["denoising"] and writes[0][1] - last[0] >= 0.4
    last[0] = time.monotonic()  # the variant's write
    reporter.stage("uploading", 0.92)
    time.sleep(0.1)
    reporter.close()  # the finish: the pending tick is dropped, never written after it
    assert [s for s, _ in writes] == ["denoising"]


def test_usage_rollups_of_dedup_hits_are_written_by_the_background_flusher_only():
    """A dedup hit adds to memory and returns; the (tenant, day) rollup write happens on the flusher's thread,
    one per pair per interval, even when Firestore is slow or failing at that moment."""
    import threading
    from datetime import datetime, timezone

    from soul_common.rollups import DedupBuffer

    class SlowDb:
        def __init__(self):
            self.writes: list[tuple[str, dict, str]] = []
            self.fail = True

        def set(self, ref, data, merge=False):
            time.sleep(0.05)
            if self.fail:
                self.fail = False
                raise RuntimeError("firestore unavailable")
            self.writes.append((ref.path, dict(data), threading.current_thread().name))

    db = SlowDb()
    buffer = DedupBuffer(db, "functions-test", flush_s=0.2)
    now = datetime(2026, 12, 2, 12, tzinfo=timezone.utc)
    started = time.monotonic()
    for _ in range(300):
        buffer.add("acme", now)
    buffer.add("globex", now)
    assert time.monotonic() - started < 0.2  # 301 hits, no write waited on
    deadline = time.monotonic() + 5
    while len(db.writes) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    by_doc = {path: data["dedup_hits"] for path, data, _ in db.writes}
    assert len(db.writes) == 2 and {name for *_, name in db.writes} == {"usage-flush"}
    assert sorted(v.value for v in by_doc.values()) == [1, 300]  # the failed flush's counts were kept


class CountingStyleStore:
    """StyleStore's surface over a dict, counting reads."""

    def __init__(self):
        self.docs: dict[str, dict] = {}
        self.reads = 0

    def read(self, soul_id):
        self.reads += 1
        doc = self.docs.get(soul_id)
        return (dict(doc) if doc else None), (doc or {}).get("updated_at")

    def write(self, soul_id, doc, version):
        self.docs[soul_id] = dict(doc)
        return True


def test_an_instance_keeps_a_souls_style_for_requests_and_forgets_it_on_its_own_writes():
    from functions.core.errors import NotFound
    from functions.services.styles import StyleService
    from schemas.api import StyleUpsert

    store, clock = CountingStyleStore(), [0.0]
    service = StyleService(store, cache_s=5.0)
    service._cache._clock = lambda: clock[0]  # noqa: SLF001 - the memo's clock, to step time
    shipped = service.current("nova").style
    for _ in range(10):
        assert service.current("nova").style == shipped
    assert store.reads == 1  # ten requests, one read
    changed = shipped.model_copy(update={"guidance": shipped.guidance + 1})
    service.put(StyleUpsert(soul_id="nova", display_name="Nova", style=changed))
    assert service.current("nova").style == changed  # this instance's own write shows at once
    store.docs["nova"] = {**store.docs["nova"], "style": shipped.model_dump(mode="json")}  # another instance's
    assert service.current("nova").style == changed
    clock[0] += 5.1
    assert service.current("nova").style == changed  # past cache_s: served while read again in the background
    deadline = time.monotonic() + 5
    while service.current("nova").style != shipped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.current("nova").style == shipped  # ... so another instance's write shows within about cache_s
    clock[0] += 5.1 + 60
    assert service.current("nova").style == shipped  # long unused: read on the request
    reads = store.reads
    for _ in range(3):
        with pytest.raises(NotFound):
            service.current("nobody")
    assert store.reads == reads + 3  # unknown souls are never kept
    assert StyleService(store).current("nova") and store.reads == reads + 4  # cache_s 0: every call reads


def test_a_refreshing_memo_reads_once_per_interval_in_the_background_and_never_resurrects_a_drop():
    from functions.core.memo import RefreshingMemo

    clock, loads, gate = [0.0], [], threading.Event()

    def load():
        loads.append(threading.current_thread().name)
        gate.wait(5)
        return len(loads)

    memo = RefreshingMemo(1.0, stale_s=10.0, clock=lambda: clock[0])
    gate.set()
    assert memo.get("k", load) == 1 and loads == ["MainThread"]  # first sight: read on the request
    clock[0] = 1.5
    gate.clear()
    assert [memo.get("k", load) for _ in range(20)] == [1] * 20  # stale served, one background read in flight
    memo.drop("k")  # this instance's own write, while that read is in flight
    gate.set()
    time.sleep(0.1)
    assert loads[1] == "memo-refresh" and len(loads) == 2
    assert memo.get("k", load) == 3  # the in-flight read did not put the dropped value back: read afresh
    memo.put("other", "x")
    memo.clear()  # everything goes (a wiped database, in tests)
    assert memo.get("other", lambda: "y") == "y" and memo.get("k", load) == 4
