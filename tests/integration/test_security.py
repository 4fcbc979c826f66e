"""Issue 8 on the real api function against the emulators, one test per finding of the attack pass: tenants and
roles from a keys file, cancels that cannot poison a cue, isolation of users, tasks and seen lists between
tenants, quotas and rate limits shared by every instance, admin-only styles with bounded `updated_at`,
idempotency keys reserved before the work, validated cursors, HEAD without side effects, security headers."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import flask
import pytest
from google.cloud import firestore

from gpu_runner.adapters.jobstore import add_variant_writes
from soul_common.firestore import Db
from schemas import names
from schemas._base import utcnow
from schemas.documents import VariantDoc
from schemas.ids import new_ulid

ACME, ACME_ADMIN, GLOBEX = "acme-client-key-0001", "acme-admin-key-0001", "globex-client-key-01"
H_ACME, H_ADMIN, H_GLOBEX = ({"X-API-Key": k} for k in (ACME, ACME_ADMIN, GLOBEX))
PENGUIN = {"soul_id": "nova", "cue": "penguin", "user_id": "user123"}


@pytest.fixture(scope="module")
def db(emulator_stack):
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


def make_api(monkeypatch, tmp_path, quotas: dict | None = None, **env: str):
    """A fresh api function (own settings) with tenants acme (client + admin key) and globex."""
    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.settings import FunctionsSettings

    entries = [
        {"tenant": "acme", "role": "client", "key": ACME, "quota": quotas or {}},
        {"tenant": "acme", "role": "admin", "key_sha256": __import__("hashlib").sha256(ACME_ADMIN.encode())
         .hexdigest()},
        {"tenant": "globex", "role": "client", "key": GLOBEX, "webhook_secret": "whsec_globex_0123456789abcdef"},
    ]
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(entries))
    monkeypatch.delenv("SOUL_API_KEYS", raising=False)
    monkeypatch.setenv("SOUL_API_KEYS_FILE", str(keys_file))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = FunctionsSettings()
    api = Api(settings, make_clients(settings.project_id))
    app = flask.Flask("tenants", static_folder=None)
    methods = ["GET", "POST", "DELETE", "HEAD"]
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request), methods=methods)
    app.add_url_rule("/", "root", lambda: api(flask.request), methods=methods)
    return app.test_client(), api


@pytest.fixture
def tenants(emulator_stack, monkeypatch, tmp_path, clean_firestore, drain_jobs):
    client, _ = make_api(monkeypatch, tmp_path)
    return client


def job(db, job_id: str) -> dict:
    return db.collection(names.JOBS).document(job_id).get().to_dict()


def seed_variant(db, pk: str, index: int = 0) -> str:
    variant_id = new_ulid()
    batch = Db(db).batch()
    add_variant_writes(batch, VariantDoc(
        variant_id=variant_id, pk=pk, soul_id="nova", variant_index=index,
        object=names.image_object("nova", pk, variant_id), width=64, height=64, seed=index, bytes=10,
        job_id=f"img-{pk}-{index}", cue="penguin", created_at=utcnow(),
    ), utcnow())
    batch.commit()
    return variant_id


def assert_error(response, status: int, code: str | None = None):
    assert response.status_code == status, (response.status_code, response.data)
    assert set(response.json["error"]) == {"code", "message", "field"}
    if code:
        assert response.json["error"]["code"] == code


# ---- cancel-poisoning ------------------------------------------------------------------------------------------


def test_four_request_cancel_rounds_never_block_a_cue(tenants, db):
    """The attack: four rounds of GET /image + DELETE /tasks/{id}; before, every later request for the cue, from
    every user and key, answered 202 canceled forever."""
    for _ in range(4):
        queued = tenants.get("/image", query_string=PENGUIN, headers=H_ACME)
        assert queued.status_code == 202 and queued.json["status"] == "queued", queued.json
        assert tenants.delete(f"/tasks/{queued.json['task_id']}", headers=H_ACME).status_code == 200
    for headers, user in ((H_ACME, "user123"), (H_ACME, "someone"), (H_GLOBEX, "user123")):
        again = tenants.get("/image", query_string={**PENGUIN, "user_id": user}, headers=headers)
        assert again.status_code == 202 and again.json["status"] == "queued", again.json
        assert job(db, again.json["task_id"])["status"] == "queued"


def test_a_cancel_withdraws_only_this_tenants_interest(tenants, db):
    mine = tenants.get("/image", query_string=PENGUIN, headers=H_ACME).json
    theirs = tenants.get("/image", query_string={**PENGUIN, "user_id": "g-7"}, headers=H_GLOBEX).json
    assert mine["task_id"] == theirs["task_id"]  # images and dedup stay shared across tenants
    task_id = mine["task_id"]

    withdrawn = tenants.delete(f"/tasks/{task_id}", headers=H_ACME)
    assert withdrawn.status_code == 200 and withdrawn.json["status"] == "canceled"
    stored = job(db, task_id)
    assert stored["status"] == "queued" and not stored["cancel_requested"] and stored["tenants"] == []
    records = [d.to_dict() for d in db.collection(names.JOBS).document(task_id).collection(names.INTEREST).stream()]
    assert sorted(r["tenant"] for r in records if not r.get("withdrawn_at")) == ["globex", "globex"]
    assert sorted(r["tenant"] for r in records if r.get("withdrawn_at")) == ["acme", "acme"]  # marker and user
    assert tenants.get(f"/tasks/{task_id}", headers=H_GLOBEX).json["status"] == "queued"
    # The canceller still reads its task as it answered: canceled, listed so, not cancelable again.
    again = tenants.get(f"/tasks/{task_id}", headers=H_ACME)
    assert again.status_code == 200, again.json
    assert {k: again.json[k] for k in ("status", "stage", "result")} == {k: withdrawn.json[k] for k in
                                                                         ("status", "stage", "result")}
    assert again.json["actions"]["cancel"] is None and again.json["user_id"] == PENGUIN["user_id"]
    for query in ({}, {"status": "canceled"}, {"user_id": PENGUIN["user_id"]}):
        listed = tenants.get("/tasks", query_string=query, headers=H_ACME).json["items"]
        assert [(t["task_id"], t["status"]) for t in listed] == [(task_id, "canceled")], query
    assert tenants.get("/tasks", query_string={"status": "queued"}, headers=H_ACME).json["items"] == []
    assert_error(tenants.delete(f"/tasks/{task_id}", headers=H_ACME), 409, "conflict")

    # Asking again joins the work that goes on; canceling again withdraws again.
    rejoined = tenants.get("/image", query_string=PENGUIN, headers=H_ACME).json
    assert rejoined["task_id"] == task_id and tenants.get(f"/tasks/{task_id}", headers=H_ACME).json["status"] == "queued"
    assert tenants.delete(f"/tasks/{task_id}", headers=H_ACME).json["status"] == "canceled"
    assert job(db, task_id)["status"] == "queued"

    last = tenants.delete(f"/tasks/{task_id}", headers=H_GLOBEX)
    assert last.status_code == 200 and last.json["status"] == "canceled"
    assert job(db, task_id)["status"] == "canceled" and job(db, task_id)["cancel_requested"]
    assert tenants.get(f"/tasks/{task_id}", headers=H_ACME).json["status"] == "canceled"


def test_a_join_racing_a_cancel_is_never_answered_with_a_job_about_to_be_canceled(emulator_stack, monkeypatch,
                                                                                 tmp_path, clean_firestore,
                                                                                 drain_jobs, db):
    """The race: acme's cancel looked for other tenants, found none, and canceled on the job's version; globex
    joined in between (its records are documents of their own, so the version did not move) and was answered 202
    on a job that then read canceled to it. Now the cancel writes its intent first and looks again."""
    client, api = make_api(monkeypatch, tmp_path)
    interest = api.services.jobs.interest
    task_id = client.get("/image", query_string=PENGUIN, headers=H_ACME).json["task_id"]
    joined = {}
    looked = interest.other_waiting

    def look_then_globex_joins(job_id, tenant):
        answer = looked(job_id, tenant)
        if not joined:  # between the cancel's first look and its write
            joined["answer"] = client.get("/image", query_string={**PENGUIN, "user_id": "g-1"}, headers=H_GLOBEX)
        return answer

    monkeypatch.setattr(interest, "other_waiting", look_then_globex_joins)
    withdrawn = client.delete(f"/tasks/{task_id}", headers=H_ACME)
    assert withdrawn.status_code == 200 and withdrawn.json["status"] == "canceled"
    answer = joined["answer"]
    assert answer.status_code == 202, answer.json
    theirs = client.get(f"/tasks/{answer.json['task_id']}", headers=H_GLOBEX).json
    assert theirs["status"] == "queued" and not theirs["cancel_requested"], theirs
    stored = job(db, answer.json["task_id"])
    assert stored["status"] == "queued" and not stored["cancel_requested"]
    if answer.json["task_id"] == task_id:  # the job goes on for globex, which now pays for its GPU time
        assert stored["tenant"] == "globex" and stored["cancel_pending_at"] is None


def test_the_tenant_left_waiting_pays_for_a_job_its_creator_withdrew_from(tenants, db):
    """A withdrawn creator was still charged (usage and GPU-seconds quota) for work only others wanted."""
    task_id = tenants.get("/image", query_string=PENGUIN, headers=H_ACME).json["task_id"]
    assert tenants.get("/image", query_string={**PENGUIN, "user_id": "g-7"}, headers=H_GLOBEX).json["task_id"] \
        == task_id
    assert job(db, task_id)["tenant"] == "acme"
    assert tenants.delete(f"/tasks/{task_id}", headers=H_ACME).status_code == 200
    stored = job(db, task_id)
    assert stored["tenant"] == "globex" and stored["status"] == "queued"
    assert tenants.get("/image", query_string=PENGUIN, headers=H_ACME).json["task_id"] == task_id  # rejoins
    assert job(db, task_id)["tenant"] == "globex"  # the payer stays the one that kept waiting


def test_video_cancels_never_block_an_animation(tenants, db):
    variant_id = seed_variant(db, "cd" * 16)
    query = {"variant_id": variant_id, "num_frames": 4, "user_id": "user123"}
    for _ in range(4):
        accepted = tenants.post("/video/generate-from-variant", query_string=query, headers=H_ACME)
        assert accepted.status_code == 202 and accepted.json["status"] == "queued", accepted.json
        assert tenants.delete(f"/tasks/{accepted.json['task_id']}", headers=H_ACME).status_code == 200
    again = tenants.post("/video/generate-from-variant", query_string=query, headers=H_GLOBEX)
    assert again.status_code == 202 and again.json["status"] == "queued", again.json


def test_failures_still_use_up_the_retry_budget(tenants, db):
    """Cancels are free; failures are not: work that always fails is not asked for forever."""
    for _ in range(4):
        queued = tenants.get("/image", query_string=PENGUIN, headers=H_ACME).json
        assert queued["status"] == "queued"
        db.collection(names.JOBS).document(queued["task_id"]).update({"status": "failed", "finished_at": utcnow()})
    assert tenants.get("/image", query_string=PENGUIN, headers=H_ACME).json["status"] == "failed"


# ---- isolation between tenants ---------------------------------------------------------------------------------


def test_tenants_see_only_their_own_tasks_users_and_seen_lists(tenants, db):
    task_id = tenants.get("/image", query_string=PENGUIN, headers=H_ACME).json["task_id"]
    assert_error(tenants.get(f"/tasks/{task_id}", headers=H_GLOBEX), 404, "not_found")
    assert_error(tenants.delete(f"/tasks/{task_id}", headers=H_GLOBEX), 404, "not_found")
    assert tenants.get("/tasks", headers=H_GLOBEX).json["items"] == []
    assert [t["task_id"] for t in tenants.get("/tasks", headers=H_ACME).json["items"]] == [task_id]
    assert tenants.get("/tasks", query_string={"user_id": "user123"}, headers=H_GLOBEX).json["items"] == []
    assert job(db, task_id)["status"] == "queued"

    # globex joins the same job: it sees only its own end user, never acme's.
    tenants.get("/image", query_string={**PENGUIN, "user_id": "g-1"}, headers=H_GLOBEX)
    assert tenants.get(f"/tasks/{task_id}", headers=H_GLOBEX).json["user_id"] == "g-1"
    assert tenants.get(f"/tasks/{task_id}", headers=H_ACME).json["user_id"] == "user123"

    # Tenant A's user123 is not tenant B's user123.
    variant_id = seed_variant(db, "ef" * 16)
    seen = {"variant_id": variant_id, "user_id": "user123"}
    assert tenants.post("/image/mark-seen", query_string=seen, headers=H_ACME).status_code == 200
    assert len(tenants.get("/image/user/user123/seen", headers=H_ACME).json["items"]) == 1
    assert tenants.get("/image/user/user123/seen", headers=H_GLOBEX).json["items"] == []


# ---- roles -----------------------------------------------------------------------------------------------------


def test_styles_are_admin_only_and_me_names_the_role(tenants):
    style = tenants.get("/style/nova", headers=H_ACME).json
    upsert = {"soul_id": "nova", "display_name": "Nova", "style": {**style["style"], "negative_prompt": ""}}
    assert_error(tenants.post("/style", json=upsert, headers=H_ACME), 403, "permission_denied")
    assert_error(tenants.delete("/style/nova", headers=H_GLOBEX), 403, "permission_denied")
    assert tenants.post("/style", json=upsert, headers=H_ADMIN).status_code == 200
    assert tenants.get("/me", headers=H_ACME).json == {"tenant": "acme", "role": "client"}
    assert tenants.get("/me", headers=H_ADMIN).json == {"tenant": "acme", "role": "admin"}
    assert_error(tenants.get("/me"), 401, "unauthenticated")
    assert_error(tenants.get("/me", headers={"X-API-Key": "nope"}), 403, "permission_denied")


def test_deployment_wide_stats_are_for_admins_only(tenants):
    """The summary counts every tenant's jobs: a client key learns nothing of other tenants from it."""
    tenants.get("/image", query_string=PENGUIN, headers=H_GLOBEX)
    for headers in (H_ACME, H_GLOBEX):
        assert_error(tenants.get("/tasks/stats/summary", headers=headers), 403, "permission_denied")
    stats = tenants.get("/tasks/stats/summary", headers=H_ADMIN)
    assert stats.status_code == 200 and stats.json["total"] >= 1


def test_style_updated_at_is_bounded_and_deletes_take_part_in_last_write_wins(tenants):
    style = tenants.get("/style/nova", headers=H_ADMIN).json["style"]
    body = {"soul_id": "nova", "style": style}
    future = tenants.post("/style", json={**body, "updated_at": "9999-01-01T00:00:00Z"}, headers=H_ADMIN)
    assert_error(future, 400, "invalid_argument")
    assert future.json["error"]["field"] == "updated_at"
    naive = tenants.post("/style", json={**body, "updated_at": "2026-01-01T00:00:00"}, headers=H_ADMIN)
    assert_error(naive, 400, "invalid_argument")
    assert naive.json["error"]["field"] == "updated_at"

    now = utcnow()
    written = tenants.post("/style", json={**body, "updated_at": now.isoformat()}, headers=H_ADMIN)
    assert written.status_code == 200
    older = (now - timedelta(minutes=1)).isoformat()
    assert_error(tenants.delete("/style/nova", query_string={"updated_at": older}, headers=H_ADMIN), 409, "conflict")
    assert tenants.get("/style/nova", headers=H_ADMIN).json["source"] == "stored"
    newer = (now + timedelta(seconds=1)).isoformat()
    deleted = tenants.delete("/style/nova", query_string={"updated_at": newer}, headers=H_ADMIN)
    assert deleted.status_code == 200 and deleted.json["deleted"] is True
    assert tenants.get("/style/nova", headers=H_ADMIN).json["source"] == "catalog"


# ---- quotas and rate limits ------------------------------------------------------------------------------------


def test_rate_limit_is_per_tenant_and_shared_by_every_instance(emulator_stack, monkeypatch, tmp_path,
                                                               clean_firestore):
    one, _ = make_api(monkeypatch, tmp_path, quotas={"requests_per_second": 0.2, "burst": 4},
                      SOUL_QUOTA_SHARDS="1")
    two, _ = make_api(monkeypatch, tmp_path, quotas={"requests_per_second": 0.2, "burst": 4},
                      SOUL_QUOTA_SHARDS="1")
    statuses = [(one if i % 2 else two).get("/tasks", headers=H_ACME).status_code for i in range(6)]
    # Two instances, one bucket of 4: each leases its tokens from it, so 4 pass in all, whichever instance.
    assert sorted(statuses) == [200] * 4 + [429] * 2, statuses
    assert statuses[:2] == [200, 200]
    limited = one.get("/tasks", headers=H_ACME)
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    assert one.get("/tasks", headers=H_GLOBEX).status_code == 200  # another tenant has its own bucket
    assert one.get("/healthz").status_code == 200  # probes are never limited


def test_jobs_per_hour_quota_counts_creations_not_joins(emulator_stack, monkeypatch, tmp_path, clean_firestore,
                                                        drain_jobs, db):
    client, _ = make_api(monkeypatch, tmp_path, quotas={"jobs_per_hour": 2})
    for cue in ("yak", "zebra"):
        assert client.get("/image", query_string={**PENGUIN, "cue": cue}, headers=H_ACME).status_code == 202
    refused = client.get("/image", query_string={**PENGUIN, "cue": "okapi"}, headers=H_ACME)
    assert_error(refused, 429, "quota_exceeded")
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    joined = client.get("/image", query_string={**PENGUIN, "cue": "yak", "user_id": "other"}, headers=H_ACME)
    assert joined.status_code == 202  # joining an existing job creates nothing
    assert client.get("/image", query_string={**PENGUIN, "cue": "okapi"}, headers=H_GLOBEX).status_code == 202
    assert len(list(db.collection(names.JOBS).stream())) == 3


def test_gpu_seconds_per_day_quota_counts_what_the_runner_recorded(emulator_stack, monkeypatch, tmp_path,
                                                                   clean_firestore, drain_jobs, db):
    client, _ = make_api(monkeypatch, tmp_path, quotas={"gpu_seconds_per_day": 50})
    from datetime import timedelta

    from gpu_runner.adapters.jobstore import JobStore as RunnerJobStore
    from schemas.jobs import JobMetrics, JobStatus
    from soul_common.firestore import Db

    task_id = client.get("/image", query_string=PENGUIN, headers=H_ACME).json["task_id"]
    runner = RunnerJobStore(Db(db), "runner-q", timedelta(seconds=30))  # the runner's own finish: rollups too
    runner.claim(task_id, "image")
    runner.finish(task_id, JobStatus.SUCCEEDED, metrics=JobMetrics(gpu_seconds=60.0, model="tiny", device="cpu"))
    assert_error(client.get("/image", query_string={**PENGUIN, "cue": "yak"}, headers=H_ACME), 429,
                 "quota_exceeded")
    assert client.get("/image", query_string={**PENGUIN, "cue": "yak"}, headers=H_GLOBEX).status_code == 202


def test_jobs_in_flight_count_against_the_gpu_seconds_of_the_day(emulator_stack, monkeypatch, tmp_path,
                                                               clean_firestore, drain_jobs, db):
    """Only finished jobs counted: 30 concurrent new jobs against a 1 s budget all ran (14 s used). Now each
    creation reserves its estimate (8 s here) first, and gives it back when the job ends."""
    from concurrent.futures import ThreadPoolExecutor as Pool

    from gpu_runner.adapters.jobstore import JobStore as RunnerJobStore
    from schemas.jobs import JobMetrics, JobStatus
    from soul_common.firestore import Db

    client, _ = make_api(monkeypatch, tmp_path, quotas={"gpu_seconds_per_day": 1.0})
    with Pool(max_workers=8) as pool:
        burst = list(pool.map(lambda n: client.get("/image", query_string={**PENGUIN, "cue": f"burst{n}"},
                                                   headers=H_ACME), range(20)))
    admitted = [r for r in burst if r.status_code == 202]
    assert len(admitted) <= 1 and all(r.status_code in (202, 429) for r in burst), [r.status_code for r in burst]
    assert len(list(db.collection(names.JOBS).stream())) == len(admitted)
    if not admitted:  # every creator saw another's reservation at once: asking alone gets through
        admitted = [client.get("/image", query_string={**PENGUIN, "cue": "alone"}, headers=H_ACME)]
    task_id = admitted[0].json["task_id"]
    assert job(db, task_id)["gpu_reservation"]["millis"] == 8000
    refused = client.get("/image", query_string={**PENGUIN, "cue": "yak"}, headers=H_ACME)
    assert_error(refused, 429, "quota_exceeded")
    assert "in flight" in refused.json["error"]["message"] and 5 <= int(refused.headers["Retry-After"]) <= 8
    assert client.get("/image", query_string={**PENGUIN, "cue": "yak"}, headers=H_GLOBEX).status_code == 202

    # The runner's finish gives the reservation back and charges what the job used: 0.25 s of 1.
    runner = RunnerJobStore(Db(db), "runner-q", timedelta(seconds=30))
    runner.claim(task_id, "image")
    runner.finish(task_id, JobStatus.SUCCEEDED, metrics=JobMetrics(gpu_seconds=0.25, model="tiny", device="cpu"))
    second = client.get("/image", query_string={**PENGUIN, "cue": "okapi"}, headers=H_ACME)
    assert second.status_code == 202 and job(db, second.json["task_id"])["tenant"] == "acme", second.json
    # A cancel of a queued job gives its reservation back too.
    assert_error(client.get("/image", query_string={**PENGUIN, "cue": "zebra"}, headers=H_ACME), 429)
    assert client.delete(f"/tasks/{second.json['task_id']}", headers=H_ACME).status_code == 200
    assert client.get("/image", query_string={**PENGUIN, "cue": "zebra"}, headers=H_ACME).status_code == 202


def test_variants_per_prompt_key_per_user_per_day_are_capped(emulator_stack, monkeypatch, tmp_path,
                                                             clean_firestore, drain_jobs, db):
    """The attack: mark-seen + re-request added variants to one prompt key without bound."""
    client, _ = make_api(monkeypatch, tmp_path, quotas={"variants_per_prompt_per_user_per_day": 1})
    first = client.get("/image", query_string=PENGUIN, headers=H_ACME).json
    variant_id = seed_variant(db, first["pk_id"])
    db.collection(names.JOBS).document(first["task_id"]).update({"status": "succeeded", "finished_at": utcnow()})
    seen = {"variant_id": variant_id, "user_id": "user123"}
    assert client.post("/image/mark-seen", query_string=seen, headers=H_ACME).status_code == 200
    refused = client.get("/image", query_string=PENGUIN, headers=H_ACME)
    assert_error(refused, 429, "quota_exceeded")
    assert refused.json["error"]["field"] == "cue"
    assert client.get("/image", query_string={**PENGUIN, "user_id": "u2"}, headers=H_ACME).status_code == 200


def test_pinning_seeds_does_not_make_a_cue_new_for_the_variants_cap(emulator_stack, monkeypatch, tmp_path,
                                                                   clean_firestore, drain_jobs):
    """The attack: each pinned seed is its own prompt key, so seed after seed grew one cue without bound."""
    client, _ = make_api(monkeypatch, tmp_path, quotas={"variants_per_prompt_per_user_per_day": 2})
    asked = [client.get("/image", query_string={**PENGUIN, "seed": seed}, headers=H_ACME) for seed in (1, 2, 3)]
    assert [r.status_code for r in asked[:2]] == [202, 202] and asked[0].json["pk_id"] != asked[1].json["pk_id"]
    assert_error(asked[2], 429, "quota_exceeded")
    assert asked[2].json["error"]["field"] == "cue"
    assert_error(client.get("/image", query_string=PENGUIN, headers=H_ACME), 429, "quota_exceeded")
    # the same pinned request again is the same job (no new variant), another cue and another user are their own
    assert client.get("/image", query_string={**PENGUIN, "seed": 1}, headers=H_ACME).json["task_id"] \
        == asked[0].json["task_id"]
    assert client.get("/image", query_string={**PENGUIN, "cue": "yak", "seed": 3}, headers=H_ACME).status_code == 202
    assert client.get("/image", query_string={**PENGUIN, "user_id": "u2", "seed": 3},
                      headers=H_ACME).status_code == 202


# ---- idempotency -----------------------------------------------------------------------------------------------


def test_concurrent_different_bodies_under_one_idempotency_key_make_one_job(tenants, db):
    def post(cue: str):
        return tenants.post("/image", json={**PENGUIN, "cue": cue}, headers={**H_ACME, "Idempotency-Key": "k-9"})

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(post, ["yak", "zebra", "okapi", "lynx"]))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(202) == 1 and set(statuses) <= {202, 409, 422}, statuses
    for response in responses:
        if response.status_code != 202:
            assert set(response.json["error"]) == {"code", "message", "field"}
    assert len(list(db.collection(names.JOBS).stream())) == 1
    # The same key of another tenant is another key.
    other = tenants.post("/image", json={**PENGUIN, "cue": "zebra"}, headers={**H_GLOBEX, "Idempotency-Key": "k-9"})
    assert other.status_code == 202


# ---- input, methods and headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tasks", "/image/variants/" + "ab" * 16, "/image/user/user123/seen",
                                  "/static/images", "/style"])
def test_reserved_cursors_are_a_400(tenants, path):
    for cursor in ("__foo__", "__name__"):
        response = tenants.get(path, query_string={"cursor": cursor}, headers=H_ACME)
        assert_error(response, 400, "invalid_argument")
        assert response.json["error"]["field"] == "cursor"


def test_head_never_creates_work(tenants, db):
    response = tenants.head("/image", query_string=PENGUIN, headers=H_ACME)
    assert response.status_code == 405 and response.headers["Allow"] == "GET, OPTIONS, POST"
    assert list(db.collection(names.JOBS).stream()) == []
    assert tenants.head("/healthz").status_code == 200


def test_security_headers_on_pages_and_answers(tenants):
    for path in ("/", "/docs"):
        response = tenants.get(path)
        assert response.status_code == 200
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert "img-src 'self' data: blob: " in csp and "media-src 'self' blob: " in csp
        connect = next(d.split()[1:] for d in csp.split(";") if d.split()[:1] == ["connect-src"])
        assert connect[0] == "'self'" and len(connect) == 2 and connect[1].startswith("http"), csp  # + media only
    assert b"<script>" not in tenants.get("/docs").data and b"<style>" not in tenants.get("/docs").data
    assert tenants.get("/ui/docs.js").status_code == 200 and tenants.get("/ui/docs.css").status_code == 200
    for path in ("/", "/docs", "/tasks", "/nowhere", "/healthz"):
        headers = tenants.get(path, headers=H_ACME).headers
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path


def test_webhook_secret_lookup_for_the_push_function(emulator_stack, monkeypatch, tmp_path):
    _, api = make_api(monkeypatch, tmp_path)
    assert api.services.keys.tenant_webhook_secret("globex") == "whsec_globex_0123456789abcdef"
    assert api.services.keys.tenant_webhook_secret("acme") is None
