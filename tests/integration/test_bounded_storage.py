"""What the emulators hide (issue 18), against the emulators: usage rollups written as work finishes and read by
the quota, `GET /usage` (a tenant's own) and the summary; TTL fields written by every writer of a short-lived
kind; signBlob-equivalent calls per request; a query refused for want of an index answering 503."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest
from google.cloud import firestore

from functions.adapters.firestore.warm_pool import WarmPoolStore
from gpu_runner.adapters.jobstore import JobStore as RunnerJobStore
from schemas import names
from schemas._base import utcnow
from schemas.jobs import JobMetrics, JobStatus
from soul_common import firestore as fs
from soul_common import retention, rollups
from soul_common.firestore import Db
from soul_common.indexes import IndexMissing
from tests.integration.test_api_surface import seed_variants
from tests.integration.test_security import H_ACME, H_ADMIN, H_GLOBEX, PENGUIN, assert_error, make_api


@pytest.fixture(scope="module")
def db(emulator_stack):
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


def finish(db, task_id: str, gpu: float, status: JobStatus = JobStatus.SUCCEEDED, runner: str = "runner-u"):
    """The runner's own claim and finish (gpu_runner/adapters/jobstore.py), rollups included."""
    store = RunnerJobStore(Db(db), runner, timedelta(seconds=30))
    store.claim(task_id, "image")
    return store.finish(task_id, status, metrics=JobMetrics(gpu_seconds=gpu, model="tiny", device="cpu"))


def test_usage_is_a_tenants_own_by_day_from_rollups_the_runner_writes(emulator_stack, monkeypatch, tmp_path,
                                                                    clean_firestore, drain_jobs, db):
    client, api = make_api(monkeypatch, tmp_path)
    first = client.get("/image", query_string=PENGUIN, headers=H_ACME).json
    second = client.get("/image", query_string={**PENGUIN, "cue": "yak"}, headers=H_ACME).json
    finish(db, first["task_id"], 2.5)
    finish(db, second["task_id"], 1.5, runner="runner-v")
    seed_variants(db, 1, pk=first["pk_id"])
    for user in ("u-a", "u-b", "u-c"):  # three dedup hits for acme
        assert client.get("/image", query_string={**PENGUIN, "user_id": user}, headers=H_ACME).json["status"] == "ready"
    today = utcnow().date().isoformat()
    mine = client.get("/usage", headers=H_ACME)
    assert mine.status_code == 200, mine.json
    assert mine.json["tenant"] == "acme" and mine.json["gpu_seconds"] == 4.0 and mine.json["images"] == 2
    assert mine.json["dedup_hits"] == 3
    assert mine.json["days"] == [{"day": today, "jobs": 2, "images": 2, "gpu_seconds": 4.0, "image_gpu_seconds": 4.0,
                                  "dedup_hits": 3, "gpu_seconds_saved_by_dedup": 6.0}]  # 3 x the 2.0 mean
    theirs = client.get("/usage", headers=H_GLOBEX).json
    assert theirs["tenant"] == "globex" and theirs["days"] == [] and theirs["gpu_seconds"] == 0.0
    assert_error(client.get("/usage", query_string={"days": 0}, headers=H_ACME), 400)
    assert_error(client.get("/usage", query_string={"days": 93}, headers=H_ACME), 400)
    summary = client.get("/tasks/stats/summary", headers=H_ADMIN).json["gpu"]
    assert summary["total_gpu_seconds"] == 4.0 and summary["rendered_images"] == 2
    assert_error(client.get("/tasks/stats/summary", headers=H_ACME), 403)
    # the shards: each runner wrote its own document of acme's day
    days = list(db.collection(rollups.USAGE).document("acme").collection(rollups.DAYS).stream())
    assert {d.to_dict()["shard"] for d in days} >= {rollups.shard_of("runner-u", rollups.TENANT_SHARDS)}


def test_a_jobs_rollup_lands_in_the_commit_that_finishes_it_or_not_at_all(emulator_stack, monkeypatch, tmp_path,
                                                                         clean_firestore, drain_jobs, db):
    """A finish refused (the lease was taken over) adds nothing to the sums; an accepted one adds its share in the
    same commit, so no runner death between the two can leave a finished job out of the quota and /usage."""
    from gpu_runner.errors import LeaseLost

    client, _ = make_api(monkeypatch, tmp_path)
    task = client.get("/image", query_string=PENGUIN, headers=H_ACME).json["task_id"]
    stale = RunnerJobStore(Db(db), "runner-stale", timedelta(seconds=30))
    stale.claim(task, "image")
    db.collection(names.JOBS).document(task).update({"lease_owner": "runner-new", "lease_generation": 99})
    with pytest.raises(LeaseLost):
        stale.finish(task, JobStatus.SUCCEEDED, metrics=JobMetrics(gpu_seconds=9.0, model="tiny", device="cpu"))
    assert rollups.totals(Db(db))["gpu_seconds"] == 0.0
    assert list(db.collection(rollups.USAGE).document("acme").collection(rollups.DAYS).stream()) == []

    calls: list[int] = []
    real_commit = rollups.fs.Batch.commit
    monkeypatch.setattr(rollups.fs.Batch, "commit", lambda self: calls.append(len(self._refs)) or real_commit(self))
    db.collection(names.JOBS).document(task).update({"lease_owner": None, "status": "queued"})
    finish(db, task, 2.0, runner="runner-new")
    assert 4 in calls  # the job's update, its two rollup increments and its reservation's return, one commit
    assert rollups.totals(Db(db))["gpu_seconds"] == 2.0
    assert rollups.gpu_seconds_on(Db(db), "acme", utcnow().date().isoformat()) == 2.0


def test_the_gpu_quota_reads_the_rollup_of_the_day(emulator_stack, monkeypatch, tmp_path, clean_firestore,
                                                   drain_jobs, db):
    client, api = make_api(monkeypatch, tmp_path, quotas={"gpu_seconds_per_day": 50})
    task_id = client.get("/image", query_string=PENGUIN, headers=H_ACME).json["task_id"]
    finish(db, task_id, 60.0)
    with api.services.db.ledger.tally() as tally:
        assert_error(client.get("/image", query_string={**PENGUIN, "cue": "yak"}, headers=H_ACME), 429,
                     "quota_exceeded")
    assert tally.by_collection[("read", "usage/*/days")] == 1  # one aggregation, not a scan of jobs
    # No scan of jobs: the aggregation is the request's only query (a tenant past its budget is refused before any
    # reservation is written or summed); the new job's own id is read by id (the creation's existence check and
    # its single-flight re-check), a constant.
    assert tally.queries == 1
    assert tally.by_collection.get(("read", names.JOBS), 0) <= 2


def test_every_short_lived_writer_writes_its_ttl_field(emulator_stack, monkeypatch, tmp_path, clean_firestore,
                                                      drain_jobs, db):
    client, api = make_api(monkeypatch, tmp_path, SOUL_QUOTAS_ENABLED="true")
    created = client.post("/image", json={**PENGUIN}, headers={**H_ACME, "Idempotency-Key": "k-1"})
    assert created.status_code in (200, 202), created.json
    task_id = created.json["task_id"]
    finish(db, task_id, 1.0)
    other = client.get("/image", query_string={**PENGUIN, "cue": "yak"}, headers=H_ACME).json["task_id"]
    assert client.delete(f"/tasks/{other}", headers=H_ACME).status_code == 200  # canceled while queued
    api.services.jobs.advance_head(task_id, 1)
    pool = WarmPoolStore(Db(db))  # (the pool is off by default)
    pool.record_asker(created.json["pk_id"], "acme", "acme:user123")
    pool.count_made(created.json["pk_id"], "acme", utcnow().date().isoformat())
    RunnerJobStore(Db(db), "runner-u", timedelta(seconds=30)).record_pace("cpu", image_seconds=1.0)

    def ttl_of(collection: str) -> list:
        return [s.to_dict().get(retention.TTL_FIELD) for s in db.collection_group(collection).stream()]

    now = utcnow()
    for kind in retention.EXPIRING:
        if kind.collection in {names.WEBHOOKS, names.DELIVERIES, names.WEBHOOK_SLOTS}:
            continue  # written by webhook registration and delivery: the next test
        values = ttl_of(kind.collection)
        assert values, f"nothing of {kind.collection!r} was written"
        assert all(v is not None and v > now for v in values), (kind.collection, values)
    job = db.collection(names.JOBS).document(task_id).get().to_dict()
    assert abs((job["expires_at"] - job["finished_at"]) - retention.JOB_RETENTION) < timedelta(seconds=1)
    for record in db.collection(names.JOBS).document(task_id).collection(names.INTEREST).stream():
        joined, expires = record.get("joined_at"), record.get(retention.TTL_FIELD)  # outlives its job
        assert abs(expires - joined - retention.JOB_RETENTION - retention.INTEREST_MARGIN) < timedelta(seconds=1)


def test_estimates_read_only_the_runners_seen_within_a_day(emulator_stack, clean_firestore, db):
    """`runner_stats` documents expire a day after their runner last wrote; estimates read only those seen within
    that day, newest first and at most RUNNER_STATS_READ, whatever the size the fleet once had."""
    from functions.adapters.firestore import jobs as api_jobs

    now = utcnow()
    for i in range(5):
        db.collection(names.RUNNER_STATS).document(f"old-{i}").set(
            {"device": "cpu", "runner_id": f"old-{i}", "image_seconds": 99.0, "samples": 3,
             "updated_at": now - retention.RUNNER_STATS_LIFETIME - timedelta(minutes=1 + i)})
    for i in range(3):
        RunnerJobStore(Db(db), f"live-{i}", timedelta(seconds=30)).record_pace("cpu", image_seconds=2.0 + i)
    ledger = fs.Ledger()
    store = api_jobs.JobStore(Db(db, ledger=ledger))
    with ledger.tally() as tally:
        stats = store.runner_stats()
    assert tally.reads == 3 and tally.queries == 1  # the old ones are never read
    assert sorted(s.runner_id for s in stats) == ["live-0", "live-1", "live-2"]
    assert [s.updated_at for s in stats] == sorted((s.updated_at for s in stats), reverse=True)
    assert [s.runner_id for s in store.runner_stats(limit=2)] == [s.runner_id for s in stats[:2]]


def test_a_warm_pool_day_counter_expires_and_a_tenants_setting_stays(emulator_stack, clean_firestore, db):
    """A tenant's warm-pool document for a key that holds only the day's counter expires (nobody may ask for that
    key again); one that holds the tenant's explicit `ahead` is a setting and never does, in either order."""
    pool = WarmPoolStore(Db(db))
    today = utcnow().date().isoformat()
    ref = db.collection(names.WARM_POOL).document("pk-1").collection("tenants").document("acme")
    pool.count_made("pk-1", "acme", today)
    pool.count_made("pk-1", "acme", today)
    counted = ref.get().to_dict()
    assert counted["made_today"] == 2 and counted["made_day"] == today
    assert counted[retention.TTL_FIELD] - utcnow() > retention.lifetime("tenants") - timedelta(minutes=1)
    pool.set_explicit_ahead("pk-1", "acme", 3)
    kept = ref.get().to_dict()
    assert retention.TTL_FIELD not in kept and kept["explicit_ahead"] == 3 and kept["made_today"] == 2
    pool.count_made("pk-1", "acme", "2999-01-01")  # a new day on a document with a setting: still no expiry
    later = ref.get().to_dict()
    assert retention.TTL_FIELD not in later and later["made_today"] == 1 and later["explicit_ahead"] == 3


def test_webhook_records_and_deliveries_carry_their_ttl(emulator_stack, clean_firestore, db):
    from functions.adapters.firestore.webhooks import WebhookStore
    from schemas.push import DeliveryDoc, WebhookDoc

    store = WebhookStore(Db(db))
    store.register(WebhookDoc(webhook_id="w1", job_id="img-1", tenant="acme", url="https://example.com/h",
                              events=["completed"], created_at=utcnow()), ["completed"])
    store.open_delivery("img-1", "w1", DeliveryDoc(key="completed", message_id="m1", event="completed",
                                                   event_type=names.EVENT_JOB_SUCCEEDED))
    assert store.claim_slot("img-1", "acme", "w1", cap=2)
    hook = db.document(f"{names.JOBS}/img-1/{names.WEBHOOKS}/w1")
    assert hook.get().to_dict()["expires_at"] > utcnow() + retention.JOB_RETENTION
    slot = db.document(f"{names.JOBS}/img-1/{names.WEBHOOK_SLOTS}/acme~0").get().to_dict()
    assert slot["expires_at"] > utcnow() + retention.JOB_RETENTION
    assert hook.collection(names.DELIVERIES).document("completed").get().to_dict()["expires_at"] > utcnow()


# ---- signing per request -------------------------------------------------------------------------------------


class SlowCountingSigner:
    """Wraps the key-file credentials: each signature takes IAM_LATENCY_S, like an IAM signBlob call."""

    IAM_LATENCY_S = 0.03

    def __new__(cls, inner):
        import google.auth.credentials

        class _Signer(google.auth.credentials.Signing):
            calls = 0
            most_in_flight = 0
            _in_flight = 0
            _lock = threading.Lock()

            @property
            def signer(self):
                return inner.signer

            @property
            def signer_email(self):
                return inner.signer_email

            def sign_bytes(self, message):
                with self._lock:
                    type(self).calls += 1
                    type(self)._in_flight += 1
                    type(self).most_in_flight = max(type(self).most_in_flight, type(self)._in_flight)
                time.sleep(cls.IAM_LATENCY_S)
                try:
                    return inner.sign_bytes(message)
                finally:
                    with self._lock:
                        type(self)._in_flight -= 1

        return _Signer()


def test_signatures_per_request_a_listing_signs_in_parallel_and_reuses_its_urls(emulator_stack, monkeypatch,
                                                                               tmp_path, clean_firestore, db):
    from google.oauth2 import service_account

    from functions.adapters import signing

    made = []
    real = service_account.Credentials.from_service_account_file

    def counting(path, **kwargs):
        made.append(SlowCountingSigner(real(path, **kwargs)))
        return made[-1]

    monkeypatch.setattr(signing.service_account.Credentials, "from_service_account_file", counting)
    client, _ = make_api(monkeypatch, tmp_path)
    seed_variants(db, 20, pk="a" * 32)
    signer = made[-1]
    listed = client.get(f"/image/variants/{'a' * 32}", query_string={"page_size": 20}, headers=H_ACME)
    assert listed.status_code == 200 and len(listed.json["items"]) == 20
    assert type(signer).calls == 20 and type(signer).most_in_flight > 1  # one signature each, in parallel
    again = client.get(f"/image/variants/{'a' * 32}", query_string={"page_size": 20}, headers=H_ACME)
    assert type(signer).calls == 20  # reused within half their lifetime
    assert [i["url"] for i in again.json["items"]] == [i["url"] for i in listed.json["items"]]


# ---- FAILED_PRECONDITION -------------------------------------------------------------------------------------


def test_a_query_without_its_index_answers_503_with_a_logged_reason(emulator_stack, monkeypatch, tmp_path,
                                                                   clean_firestore, capsys):
    client, api = make_api(monkeypatch, tmp_path)

    def refused(*args, **kwargs):
        raise IndexMissing("jobs: tenants array_contains, created_at desc", "The query requires an index.")

    monkeypatch.setattr(api.services.jobs.interest, "page", refused)  # GET /tasks pages the interest records
    answer = client.get("/tasks", headers=H_ACME)
    assert_error(answer, 503, "unavailable")
    logged = capsys.readouterr()
    assert "firestore_index_missing" in logged.out + logged.err
