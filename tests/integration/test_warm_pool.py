"""The warm pool against the emulators: demand (two users) makes the next variant pre-render in the background
lane with its reason recorded; a user taking their last unseen variant queues the next before they ask; a
pre-render a user later gets counts as delivered in /tasks/stats/summary; POST /image/warm and the per-key cap;
pre-renders charged to the asking tenant's GPU quota, whose refusal skips them without failing the answer."""

from __future__ import annotations

import json
import os

import pytest
from google.cloud import firestore

from schemas import names
from schemas._base import utcnow
from tests.support import api_client_with, pull_all

PENGUIN = {"soul_id": "nova", "cue": "penguin"}


@pytest.fixture
def pool(emulator_stack, clean_firestore, drain_jobs, subscriber, monkeypatch):
    pull_all(subscriber, names.SUB_RUNNER_BACKGROUND, rounds=2)

    def make(**env: str):
        return api_client_with(monkeypatch, "warm", SOUL_WARM_POOL_ENABLED="true", **env)[1]

    return make


def db() -> firestore.Client:
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


def render(job_id: str) -> str:
    """Finish an image job as the runner does: the variant document, the prompt's index, the job's result."""
    job_ref = db().collection(names.JOBS).document(job_id)
    spec = job_ref.get().to_dict()["request"]
    now = utcnow()
    variant = {"variant_id": spec["variant_id"], "pk": spec["pk"], "soul_id": spec["soul_id"],
               "variant_index": spec["variant_index"], "object": names.image_object(spec["soul_id"], spec["pk"],
                                                                                    spec["variant_id"]),
               "width": 64, "height": 64, "seed": spec["seed"], "bytes": 10, "job_id": job_id, "cue": spec["cue"],
               "created_at": now}
    db().collection(names.VARIANTS).document(spec["variant_id"]).set(variant)
    db().collection(names.PROMPTS).document(spec["pk"]).update(
        {"variant_ids": firestore.ArrayUnion([spec["variant_id"]])})
    job_ref.update({"status": "succeeded", "stage": "done", "progress": 1.0, "started_at": now, "finished_at": now})
    return spec["variant_id"]


def prerender_jobs() -> list[dict]:
    jobs = [s.to_dict() for s in db().collection(names.JOBS).stream()]
    return sorted((j for j in jobs if j["requested_by"] == "warm-pool"), key=lambda j: j["job_id"])


def test_demand_pre_renders_the_next_variant_and_a_taken_pre_render_counts_as_delivered(pool, subscriber):
    client = pool()
    first = client.get("/image", query_string={**PENGUIN, "user_id": "ann"}).json
    assert prerender_jobs() == []  # one user is no demand yet
    second = client.get("/image", query_string={**PENGUIN, "user_id": "bob"}).json
    assert second["task_id"] == first["task_id"]
    [pre] = prerender_jobs()  # bob joined the job making variant 0: variant 1 is made ahead
    pk = first["pk_id"]
    assert pre["job_id"].endswith(f"{pk}-1") and pre["lane"] == "background"
    [message] = pull_all(subscriber, names.SUB_RUNNER_BACKGROUND)
    assert message.message.attributes["job_id"] == pre["job_id"]
    record = db().collection(names.WARM_POOL).document(pk).collection("prerenders").document("1").get().to_dict()
    assert "waits on variant 0" in record["reason"] and record["delivered"] is False

    v0, v1 = render(first["task_id"]), render(pre["job_id"])
    assert client.get("/image", query_string={**PENGUIN, "user_id": "ann"}).json["variant"]["variant_id"] == v0
    assert len(prerender_jobs()) == 1  # ann still has variant 1 unseen
    assert client.post(f"/image/mark-seen?variant_id={v0}&user_id=ann").status_code == 200
    took = client.get("/image", query_string={**PENGUIN, "user_id": "ann"}).json
    assert took["status"] == "ready" and took["variant"]["variant_id"] == v1  # no wait: it was pre-rendered
    assert [j["job_id"][-2:] for j in prerender_jobs()] == ["-1", "-2"]  # her last unseen: the next is queued

    stats = client.get("/tasks/stats/summary").json["prerenders"]
    assert stats == {"made": 2, "delivered": 1, "waste_ratio": 0.5}


def test_marking_the_last_unseen_variant_seen_queues_the_next(pool):
    client = pool(SOUL_WARM_POOL_MIN_USERS="1")
    task_id = client.get("/image", query_string={**PENGUIN, "user_id": "ann"}).json["task_id"]
    [pre] = prerender_jobs()  # waiting on variant 0 (her last): variant 1 is made ahead
    v0, v1 = render(task_id), render(pre["job_id"])
    assert client.post(f"/image/mark-seen?variant_id={v0}&user_id=ann").status_code == 200
    assert len(prerender_jobs()) == 1  # variant 1 still waits for her
    assert client.post(f"/image/mark-seen?variant_id={v1}&user_id=ann").status_code == 200
    assert [j["job_id"][-2:] for j in prerender_jobs()] == ["-1", "-2"]


def test_explicit_warm_queues_ahead_within_the_bounds(pool, subscriber):
    client = pool(SOUL_WARM_POOL_KEY_CAP_PER_DAY="2")
    answer = client.post("/image/warm", json={"soul_id": "nova", "cue": "zebra", "variants": 3})
    assert answer.status_code == 200, answer.json
    assert len(answer.json["queued"]) == 2 and answer.json["ahead"] == 3  # the per-key cap stopped the third
    assert len(pull_all(subscriber, names.SUB_RUNNER_BACKGROUND)) == 2
    again = client.post("/image/warm", json={"soul_id": "nova", "cue": "zebra", "variants": 3}).json
    assert again["queued"] == []  # in flight already, and capped
    too_many = client.post("/image/warm", json={"soul_id": "nova", "cue": "zebra", "variants": 9})
    assert too_many.status_code == 400 and too_many.json["error"]["field"] == "variants"
    reasons = [s.to_dict()["reason"] for s in
               db().collection(names.WARM_POOL).document(answer.json["pk_id"]).collection("prerenders").stream()]
    assert reasons == ["POST /image/warm asked for 3 ahead"] * 2


def test_pre_renders_are_charged_to_the_asking_tenant_and_its_quota_only_skips_them(pool, tmp_path, monkeypatch):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([
        {"tenant": "acme", "role": "client", "key": "acme-warm-key-0001", "quota": {"jobs_per_hour": 1}},
        {"tenant": "globex", "role": "client", "key": "globex-warm-key-01"},
    ]))
    monkeypatch.delenv("SOUL_API_KEYS", raising=False)
    client = pool(SOUL_API_KEYS_FILE=str(keys), SOUL_WARM_POOL_MIN_USERS="1")
    acme, globex = {"X-API-Key": "acme-warm-key-0001"}, {"X-API-Key": "globex-warm-key-01"}

    asked = client.get("/image", query_string={**PENGUIN, "user_id": "ann"}, headers=acme)
    assert asked.status_code == 202, asked.json  # acme's one job of this hour
    assert prerender_jobs() == []  # the pre-render would be its second: refused, and the answer stood
    v0 = render(asked.json["task_id"])
    took = client.get("/image", query_string={**PENGUIN, "user_id": "ann"}, headers=acme)
    assert took.status_code == 200 and took.json["variant"]["variant_id"] == v0  # a hit, though over quota
    assert prerender_jobs() == []

    other = client.get("/image", query_string={**PENGUIN, "user_id": "bob"}, headers=globex)
    assert other.status_code == 200 and other.json["variant"]["variant_id"] == v0
    [pre] = prerender_jobs()  # bob took his last unseen variant: the next one, charged to globex
    assert pre["tenant"] == "globex" and pre["lane"] == "background"
    assert client.get(f"/tasks/{pre['job_id']}", headers=acme).status_code == 404  # not acme's


def test_the_pool_is_off_unless_enabled(api):
    for user in ("ann", "bob", "cid"):
        api.get("/image", query_string={**PENGUIN, "user_id": user})
    assert prerender_jobs() == []
    assert api.get("/tasks/stats/summary").json["prerenders"] == {"made": 0, "delivered": 0, "waste_ratio": None}


# ---- issue 19: the shared cache shares images, not control --------------------------------------------------------


def _two_tenants(tmp_path, monkeypatch, pool, **env: str):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([
        {"tenant": "acme", "role": "admin", "key": "acme-warm-admin-01"},
        {"tenant": "acme", "role": "client", "key": "acme-warm-key-0001"},
        {"tenant": "globex", "role": "client", "key": "globex-warm-key-01", "quota": {"jobs_per_hour": 40}},
    ]))
    monkeypatch.delenv("SOUL_API_KEYS", raising=False)
    client = pool(SOUL_API_KEYS_FILE=str(keys), **env)
    return client, {"X-API-Key": "acme-warm-admin-01"}, {"X-API-Key": "acme-warm-key-0001"}, \
        {"X-API-Key": "globex-warm-key-01"}


def _jobs_created_by(tenant: str) -> int:
    """Jobs this tenant created (what its jobs/hour and GPU-seconds quotas are charged for)."""
    return sum(1 for s in db().collection(names.JOBS).stream() if s.to_dict().get("tenant") == tenant)


def test_one_tenants_warm_settings_never_make_or_charge_pre_renders_for_another(pool, tmp_path, monkeypatch):
    client, admin, _, globex = _two_tenants(tmp_path, monkeypatch, pool)
    warmed = client.post("/image/warm", json={**PENGUIN, "variants": 4}, headers=admin)
    assert warmed.status_code == 200 and len(warmed.json["queued"]) == 4, warmed.json
    made_for_acme = {j["job_id"] for j in prerender_jobs()}
    assert {j["tenant"] for j in prerender_jobs()} == {"acme"}
    for job_id in sorted(made_for_acme):
        render(job_id)
    before = len(prerender_jobs())
    charged_before = _jobs_created_by("globex")
    for user in ("gina", "gus", "gail"):  # globex's users take the shared images: that is what sharing is for
        took = client.get("/image", query_string={**PENGUIN, "user_id": user}, headers=globex)
        assert took.status_code == 200, took.json
        variant = took.json["variant"]["variant_id"]
        assert client.post(f"/image/mark-seen?variant_id={variant}&user_id={user}", headers=globex).status_code == 200
    # ... but acme's `ahead` is acme's: nothing was queued for globex, nor charged to it, nor shown in its /tasks.
    assert len(prerender_jobs()) == before
    assert _jobs_created_by("globex") == charged_before == 0
    listed = client.get("/tasks", headers=globex).json["items"]
    assert [t for t in listed if t["task_id"] in made_for_acme] == []
    for job_id in made_for_acme:
        assert client.get(f"/tasks/{job_id}", headers=globex).status_code == 404


def test_demand_is_per_tenant_and_pre_renders_charge_only_the_tenant_that_showed_it(pool, tmp_path, monkeypatch):
    client, _, acme, globex = _two_tenants(tmp_path, monkeypatch, pool, SOUL_WARM_POOL_MIN_USERS="2")
    first = client.get("/image", query_string={**PENGUIN, "user_id": "ann"}, headers=acme).json
    # One user of acme and one of globex: no tenant has two, so there is no demand and no pre-render.
    assert client.get("/image", query_string={**PENGUIN, "user_id": "bob"}, headers=globex).json["task_id"] \
        == first["task_id"]
    assert prerender_jobs() == []
    # Globex invents a second user: that is globex's demand, made for and charged to globex alone.
    client.get("/image", query_string={**PENGUIN, "user_id": "invented-2"}, headers=globex)
    [pre] = prerender_jobs()
    assert pre["tenant"] == "globex" and pre["tenants"] == ["globex"]
    assert client.get(f"/tasks/{pre['job_id']}", headers=acme).status_code == 404
    assert [t for t in client.get("/tasks", headers=acme).json["items"] if t["task_id"] == pre["job_id"]] == []
    record = db().collection(names.WARM_POOL).document(first["pk_id"]).collection("prerenders").document("1")
    assert record.get().to_dict()["tenant"] == "globex"


def test_a_warmed_cue_stays_warm_after_its_style_changes(pool, subscriber):
    """A style or identity change makes the cue a new prompt key: the warm setting stayed on the old key, the new
    one was rendered cold and nothing was ever pre-rendered for it (the old pre-renders were never delivered)."""
    client = pool()
    warmed = client.post("/image/warm", json={"soul_id": "nova", "cue": "otter", "variants": 2}).json
    assert len(warmed["queued"]) == 2
    changed = client.post("/style", json={"soul_id": "nova", "style": {"steps": 3}})
    assert changed.status_code in (200, 201), changed.json
    asked = client.get("/image", query_string={"soul_id": "nova", "cue": "otter", "user_id": "w1"}).json
    assert asked["pk_id"] != warmed["pk_id"]
    state = db().collection(names.WARM_POOL).document(asked["pk_id"]).collection("tenants").document(
        "default").get().to_dict()
    assert state["explicit_ahead"] == 2  # carried over to the new key
    fresh = [j for j in prerender_jobs() if j["request"]["pk"] == asked["pk_id"]]
    assert len(fresh) == 2, fresh  # the user's render is the first; two more wait behind it
