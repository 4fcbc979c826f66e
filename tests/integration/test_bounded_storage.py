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
    assert 3 in calls  # the job's update and its two rollup increments, one commit
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
    # No scan of jobs: the aggregation is the request's only query; the new job's own id is read by id (the
    # creation's existence check and its single-flight re-check), a constant.
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
    WarmPoolStore(Db(db)).record_asker(created.json["pk_id"], "acme", "acme:user123")  # (the pool is off by default)

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
