"""The seed's whole HTTP surface on the real api function against the emulators: selfies, mark-seen, variant
and seen listings, styles (last write wins, also under a race), tasks (list, cancel, stats), estimates, info,
OpenAPI, compatibility redirects, Idempotency-Key and API-key auth."""

from __future__ import annotations

import os
import random
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from google.cloud import firestore

from gpu_runner.adapters.jobstore import add_variant_writes
from soul_common.firestore import Db
from schemas import names
from schemas._base import utcnow
from schemas.documents import VariantDoc
from schemas.ids import new_ulid

PK = "ab" * 16


@pytest.fixture(scope="session")
def db(emulator_stack):
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


def seed_variants(db, count: int, pk: str = PK) -> list[str]:
    ids = []
    for index in range(count):
        variant_id = new_ulid()
        batch = Db(db).batch()
        add_variant_writes(batch, VariantDoc(
            variant_id=variant_id, pk=pk, soul_id="nova", variant_index=index,
            object=names.image_object("nova", pk, variant_id), width=64, height=64, seed=index, bytes=10,
            job_id=f"img-{pk}-{index}", cue="penguin", created_at=utcnow(),
        ), utcnow())
        batch.commit()
        ids.append(variant_id)
    return ids


def collect(api, path: str, page_size: int, **params) -> list[dict]:
    items, cursor, pages = [], None, 0
    while True:
        query = {"page_size": page_size, **params, **({"cursor": cursor} if cursor else {})}
        body = api.get(path, query_string=query).json
        items.extend(body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            return items
        assert pages < 100


# ---- selfies ---------------------------------------------------------------------------------------------------


def test_selfie_names_a_fitting_place_and_avoids_recent_ones(api):
    body = {"soul_id": "nova", "city_key": "paris", "mood": "calm", "user_id": "u1"}
    first = api.post("/image/selfie", json=body)
    assert first.status_code == 202, first.json
    place = first.json["place"]
    assert place["city_key"] == "paris" and place["city_name"] == "Paris" and place["name"]
    second = api.post("/image/selfie", json=body).json
    assert second["place"]["key"] != place["key"]
    assert second["task_id"] != first.json["task_id"]
    # Another user with the same inputs gets the same deterministic first choice, and shares its job.
    other = api.post("/image/selfie", json={**body, "user_id": "u2"}).json
    assert other["place"]["key"] == place["key"] or other["task_id"] in (first.json["task_id"], second["task_id"])


@pytest.mark.parametrize(
    ("change", "field", "listed"),
    [({"city_key": "atlantis"}, "city_key", ["new_york", "paris", "tokyo"]),
     ({"mood": "grumpy"}, "mood", ["happy", "calm", "adventurous"])],
)
def test_selfie_unknown_city_or_mood_lists_the_valid_ones(api, change, field, listed):
    body = {"soul_id": "nova", "city_key": "paris", "mood": "happy", "user_id": "u1", **change}
    response = api.post("/image/selfie", json=body)
    assert response.status_code == 400 and response.json["error"]["field"] == field
    assert all(name in response.json["error"]["message"] for name in listed)


# ---- mark-seen and listings ------------------------------------------------------------------------------------


def test_mark_seen_is_idempotent_and_lists_paginate(api, db):
    ids = seed_variants(db, 7)
    assert api.post("/image/mark-seen", query_string={"variant_id": new_ulid(), "user_id": "u1"}).status_code == 404
    first = api.post("/image/mark-seen", query_string={"variant_id": ids[0], "user_id": "u1"})
    assert first.status_code == 200 and first.json["pk_id"] == PK
    again = api.post("/image/mark-seen", query_string={"variant_id": ids[0], "user_id": "u1"})
    assert again.json["seen_at"] == first.json["seen_at"]
    for variant_id in ids[1:5]:
        api.post("/image/mark-seen", query_string={"variant_id": variant_id, "user_id": "u1"})

    seen = collect(api, "/image/user/u1/seen", page_size=2)
    assert sorted(s["variant_id"] for s in seen) == sorted(ids[:5])
    variants = collect(api, f"/image/variants/{PK}", page_size=3)
    assert [v["variant_id"] for v in variants] == sorted(ids)
    assert all(v["url"].startswith("http") and "X-Goog-Signature" in v["url"] for v in variants)
    assert api.get(f"/image/variants/{'cd' * 16}").json == {"items": [], "next_cursor": None}
    assert api.get("/image/variants/not-a-pk").status_code == 400
    bad_cursor = api.get(f"/image/variants/{PK}", query_string={"cursor": "nope"})
    assert bad_cursor.status_code == 400 and bad_cursor.json["error"]["field"] == "cursor"
    assert api.get(f"/image/variants/{PK}", query_string={"page_size": 101}).status_code == 400


# ---- styles ----------------------------------------------------------------------------------------------------

STYLE = {"prompt_prefix": "watercolor of nova", "negative_prompt": "photo", "width": 512, "height": 512,
         "steps": 20, "guidance": 6.0}


def at(seconds: int) -> str:
    return (datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)).isoformat()


def test_style_lifecycle_and_last_write_wins(api):
    assert api.get("/style/nova").json["source"] == "catalog"
    assert api.get("/style/ghost").status_code == 404
    created = api.post("/style", json={"soul_id": "ghost", "style": STYLE, "updated_at": at(10)})
    assert created.status_code == 200 and created.json["source"] == "stored"
    older = api.post("/style", json={"soul_id": "ghost", "style": {**STYLE, "steps": 5}, "updated_at": at(5)})
    assert older.json["style"]["steps"] == 20 and older.json["updated_at"] == created.json["updated_at"]
    newer = api.post("/style", json={"soul_id": "ghost", "style": {**STYLE, "steps": 30}, "updated_at": at(20)})
    assert newer.json["style"]["steps"] == 30
    assert api.get("/style/ghost").json["style"]["steps"] == 30
    souls = [s["soul_id"] for s in collect(api, "/style", page_size=2)]
    assert souls == sorted(souls) and {"nova", "atlas", "mira", "ghost"} <= set(souls)

    # A soul with a stored style exists: images can be asked for it.
    assert api.get("/image", query_string={"soul_id": "ghost", "cue": "cat", "user_id": "u"}).status_code == 202
    assert api.delete("/style/ghost").status_code == 200
    assert api.get("/style/ghost").status_code == 404
    assert api.delete("/style/ghost").status_code == 404
    # An older write arriving after the delete does not bring the style back.
    late = api.post("/style", json={"soul_id": "ghost", "style": STYLE, "updated_at": at(30)})
    assert late.status_code == 409 and late.json["error"]["field"] == "updated_at"
    assert api.get("/style/ghost").status_code == 404
    revived = api.post("/style", json={"soul_id": "ghost", "style": STYLE})  # now: newer than the delete
    assert revived.status_code == 200 and revived.json["source"] == "stored"


def test_a_changed_style_never_serves_old_images(api):
    before = api.get("/image", query_string={"soul_id": "nova", "cue": "owl", "user_id": "u"}).json
    api.post("/style", json={"soul_id": "nova", "style": STYLE})
    after = api.get("/image", query_string={"soul_id": "nova", "cue": "owl", "user_id": "u"}).json
    assert after["pk_id"] != before["pk_id"] and after["task_id"] != before["task_id"]


def test_concurrent_style_writers_out_of_order_leave_the_newest(api):
    writes = [{"soul_id": "racer", "style": {**STYLE, "steps": n}, "updated_at": at(n)} for n in range(1, 25)]
    random.Random(7).shuffle(writes)
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda w: api.post("/style", json=w), writes))
    assert all(a.status_code == 200 for a in answers), [a.json for a in answers if a.status_code != 200]
    final = api.get("/style/racer").json
    assert final["style"]["steps"] == 24 and final["updated_at"] == at(24).replace("+00:00", "Z")


# ---- tasks -----------------------------------------------------------------------------------------------------


def test_tasks_list_filters_and_paginates(api):
    task_ids = set()
    for i in range(5):
        task_ids.add(api.get("/image", query_string={"soul_id": "nova", "cue": f"fox {i}", "user_id": "ann"}).json["task_id"])
    api.get("/image", query_string={"soul_id": "atlas", "cue": "fox", "user_id": "bob"})
    listed = collect(api, "/tasks", page_size=2, user_id="ann")
    assert {t["task_id"] for t in listed} == task_ids
    created = [t["created_at"] for t in listed]
    assert created == sorted(created, reverse=True)
    assert {t["soul_id"] for t in collect(api, "/tasks", page_size=10, soul_id="atlas")} == {"atlas"}
    assert len(collect(api, "/tasks", page_size=10, status="queued", type="image")) == 6
    assert collect(api, "/tasks", page_size=10, status="succeeded") == []
    assert api.get("/tasks", query_string={"status": "exploded"}).status_code == 400


def test_cancel_a_queued_task_and_finished_ones_conflict(api):
    task_id = api.get("/image", query_string={"soul_id": "nova", "cue": "bee", "user_id": "u"}).json["task_id"]
    canceled = api.delete(f"/tasks/{task_id}")
    assert canceled.status_code == 200 and canceled.json["status"] == "canceled"
    assert canceled.json["actions"]["cancel"] is None
    again = api.delete(f"/tasks/{task_id}")
    assert again.status_code == 409 and "canceled" in again.json["error"]["message"]
    assert api.delete("/tasks/img-" + "e" * 32 + "-0").status_code == 404
    # The next request for the same cue makes a fresh job instead of joining the canceled one.
    retry = api.get("/image", query_string={"soul_id": "nova", "cue": "bee", "user_id": "u"}).json
    assert retry["task_id"] == task_id + "-r1"


def test_stats_summary_counts_and_durations(api, db):
    for cue in ("ant", "bat", "cat"):
        api.get("/image", query_string={"soul_id": "nova", "cue": cue, "user_id": "u"})
    jobs = list(db.collection(names.JOBS).stream())
    start = utcnow() - timedelta(seconds=100)
    for seconds, snap in zip((4.0, 10.0), jobs):
        snap.reference.update({"status": "succeeded", "started_at": start, "finished_at": start + timedelta(seconds=seconds)})
    stats = api.get("/tasks/stats/summary").json
    assert stats["total"] == 3 and stats["by_status"]["queued"] == 1 and stats["by_status"]["succeeded"] == 2
    assert stats["by_type"] == {"image": 3, "video": 0}
    assert stats["durations"]["image"] == {"count": 2, "p50_seconds": 4.0, "p95_seconds": 10.0}


# ---- estimates, info, docs, compatibility --------------------------------------------------------------------


def test_video_estimate_from_configuration_then_from_measurements(api, db):
    configured = api.get("/video/estimate", query_string={"num_frames": 25}).json
    assert configured["source"] == "configured" and configured["num_frames"] == 25
    assert configured["video_generation_seconds"] == 50.0
    assert configured["estimated_seconds"] == configured["video_generation_seconds"] + configured["gif_conversion_seconds"]
    assert configured["estimated_minutes"] == round(configured["estimated_seconds"] / 60, 1)
    db.collection(names.RUNNER_STATS).document("cuda-h100").set(
        {"device": "cuda:NVIDIA H100", "video_seconds_per_frame": 0.5, "encode_seconds_per_frame": 0.02,
         "samples": 3, "updated_at": utcnow()}
    )
    measured = api.get("/video/estimate", query_string={"num_frames": 10}).json
    assert measured["source"] == "measured" and measured["video_generation_seconds"] == 5.0
    assert measured["gif_conversion_seconds"] == 0.2 and measured["device"] == "cuda:NVIDIA H100"
    assert api.get("/video/estimate").json["num_frames"] == 25
    assert api.get("/video/estimate", query_string={"num_frames": 1000}).status_code == 400


def test_info_openapi_and_docs(api):
    info = api.get("/info").json
    assert info["name"] == "soul" and info["backends"]["firestore"].startswith("emulator at")
    assert not any("key" in k and "file" not in k and v for k, v in info["configuration"].items() if k != "auth_mode")
    spec = api.get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    assert {"/image", "/image/selfie", "/tasks/{task_id}", "/style/{soul_id}", "/video/estimate"} <= set(spec["paths"])
    docs = api.get("/docs")
    assert docs.status_code == 200 and b"openapi.json" in docs.data


def test_static_paths_redirect_to_signed_urls_and_never_read_disk(api, db):
    [variant_id] = seed_variants(db, 1)
    for prefix in ("/static/image/", "/generated/"):
        response = api.get(f"{prefix}{variant_id}.png")
        assert response.status_code == 302 and "X-Goog-Signature" in response.headers["Location"]
    assert api.get(f"/static/image/{new_ulid()}.png").status_code == 404
    for bad in ("..%2F..%2Fetc%2Fpasswd", "x.png", "%2Fetc%2Fpasswd.png", f"{variant_id}.jpg"):
        assert api.get(f"/static/image/{bad}").status_code in (400, 404)
    assert api.get("/static/videos/vid-" + "0" * 32 + "-0.gif").status_code == 404
    listing = api.get("/static/images").json  # images of this tenant's tasks only: this one came from no task
    assert listing["items"] == []  # (tests/integration/test_tenant_boundaries.py lists real ones)


# ---- idempotency and auth --------------------------------------------------------------------------------------


def test_idempotency_key_replays_and_rejects_a_different_body(api):
    body = {"soul_id": "nova", "cue": "yak", "user_id": "u"}
    first = api.post("/image", json=body, headers={"Idempotency-Key": "k-1"})
    second = api.post("/image", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 202 and first.data == second.data
    other = api.post("/image", json={**body, "cue": "zebra"}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.json["error"]["code"] == "idempotency_key_reused"
    assert api.post("/image", json=body, headers={"Idempotency-Key": "bad key"}).status_code == 400


@pytest.fixture
def secured(emulator_stack, monkeypatch, clean_firestore):
    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.settings import FunctionsSettings

    monkeypatch.setenv("SOUL_API_KEYS", "alpha-key,beta-key")
    settings = FunctionsSettings()
    api = Api(settings, make_clients(settings.project_id))
    import flask

    app = flask.Flask("secured")
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request), methods=["GET", "POST", "DELETE"])
    app.add_url_rule("/", "root", lambda: api(flask.request))
    return app.test_client()


def test_api_keys_guard_everything_but_health_and_docs(secured):
    for path in ("/healthz", "/ready", "/docs", "/openapi.json", "/", "/ui/app.js", "/favicon.ico"):
        assert secured.get(path).status_code == 200, path
    assert b'<script type="module" src="ui/app.js">' in secured.get("/").data
    missing = secured.get("/tasks")
    assert missing.status_code == 401 and missing.json["error"]["code"] == "unauthenticated"
    wrong = secured.get("/tasks", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json["error"]["code"] == "permission_denied"
    assert secured.get("/tasks", headers={"Authorization": "Bearer alpha-key"}).status_code == 200
    assert secured.get("/tasks", headers={"X-API-Key": "beta-key"}).status_code == 200
    assert secured.get("/style/nova", headers={"X-API-Key": "beta-key"}).status_code == 200


def test_deployed_configuration_refuses_to_run_without_auth(monkeypatch):
    from functions.settings import FunctionsSettings

    monkeypatch.setenv("SOUL_REQUIRE_AUTH", "true")
    monkeypatch.delenv("SOUL_API_KEYS", raising=False)
    with pytest.raises(ValueError, match="auth is off"):
        FunctionsSettings()
    monkeypatch.setenv("SOUL_AUTH_MODE", "platform")
    assert FunctionsSettings().auth_mode == "platform"


def test_error_shape_for_odd_input(api):
    for path in ("/image?soul_id=nova&cue=%00%01&user_id=u", "/image?soul_id=nova&cue=a&cue=b&user_id=u",
                 "/tasks/..%2F..%2Fetc", "/image/user/%20/seen", "/tasks?page_size=-1"):
        response = api.get(path)
        assert 400 <= response.status_code < 500, path
        assert set(response.json["error"]) == {"code", "message", "field"}
        assert re.match(r"^[a-z_]+$", response.json["error"]["code"])


def test_a_cue_is_bounded_as_composed_text_and_a_query_must_be_utf8(api):
    """Canonically equal cues are one cue of one length (NFD "e" + U+0301 counts as "é"); an undecodable escape
    in the query is a 400, not the literal text `%ff` (which would make `%ff` and `%25ff` one cue)."""
    composed = api.post("/image", json={"soul_id": "nova", "cue": "\u00e9" * 200, "user_id": "u"})
    decomposed = api.post("/image", json={"soul_id": "nova", "cue": "e\u0301" * 200, "user_id": "u"})
    assert composed.status_code == decomposed.status_code == 202, decomposed.json
    assert composed.json["pk_id"] == decomposed.json["pk_id"]
    assert api.post("/image", json={"soul_id": "nova", "cue": "e\u0301" * 201, "user_id": "u"}).status_code == 400
    bad = api.get("/image?soul_id=nova&user_id=u&cue=%ff%fe%20zz")
    assert bad.status_code == 400 and bad.json["error"]["field"] == "query"
    literal = api.get("/image?soul_id=nova&user_id=u&cue=%25ff%25fe%20zz")
    same = api.post("/image", json={"soul_id": "nova", "cue": "%ff%fe zz", "user_id": "v"})
    assert literal.status_code == 202 and literal.json["pk_id"] == same.json["pk_id"]


def test_a_style_time_past_what_utc_holds_is_a_400(api):
    for instant in ("0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"):
        response = api.post("/style", json={"soul_id": "atlas", "style": {}, "updated_at": instant})
        assert response.status_code == 400 and response.json["error"]["field"] == "updated_at", response.json
        deleted = api.delete("/style/atlas", query_string={"updated_at": instant})
        assert deleted.status_code == 400 and deleted.json["error"]["field"] == "updated_at"


def test_input_where_an_endpoint_reads_none_is_refused_not_ignored(api):
    """Query parameters beside a JSON body, a body where the fields go in the query, a key given twice in one
    JSON object: each a 400 naming where the input belongs; nothing is created."""
    beside = api.post("/image?cue=zebra", json={"soul_id": "nova", "cue": "yak", "user_id": "u"})
    assert beside.status_code == 400 and beside.json["error"]["field"] == "query" and "cue" in beside.json["error"][
        "message"]
    for path in ("/image/mark-seen?user_id=u&variant_id=" + new_ulid(),
                 "/video/generate-from-variant?variant_id=" + new_ulid()):
        refused = api.post(path, json={"variant_id": "x"})
        assert refused.status_code == 400 and refused.json["error"]["field"] == "body", path
    twice = api.post("/image", data='{"soul_id": "nova", "cue": "yak", "cue": "zebra", "user_id": "u"}',
                     content_type="application/json")
    assert twice.status_code == 400 and twice.json["error"]["field"] == "cue"
    nested = api.post("/style", data='{"soul_id": "atlas", "style": {"steps": 20, "steps": 30}}',
                      content_type="application/json")
    assert nested.status_code == 400 and nested.json["error"]["field"] == "steps"
    assert api.get("/tasks").json["items"] == []
    # An endpoint that reads no query says so (a caller believing `days=7` filtered the summary got all of it);
    # probes and the original app's file URLs (which may carry a cache-buster) still ignore one.
    for path in ("/tasks/stats/summary?days=abc", "/me?x=1", "/info?foo=bar&foo=baz", "/image/selfie/options?x",
                 "/style/nova?v=2", "/tasks/" + "img-" + "0" * 32 + "-0?verbose=1"):
        refused = api.get(path)
        assert refused.status_code == 400 and refused.json["error"]["field"] == "query", (path, refused.json)
        assert "takes no query parameters" in refused.json["error"]["message"]
    assert api.get("/healthz?probe=1").status_code == 200
    assert api.get(f"/static/image/{new_ulid()}.png?v=3").status_code == 404
