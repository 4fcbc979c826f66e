"""Issue 19's cross-tenant findings on the real api function against the emulators, one test per finding: the
static paths and listings follow the visibility of `/tasks`, cursors are checked within the caller's own results
(no existence oracle), the cue bound holds after normalization (a 400, nothing written), `/info` shows the
infrastructure only to admins, wrong keys are rate limited per source, and `OPTIONS` answers like every route."""

from __future__ import annotations

import os

import pytest
from google.cloud import firestore

from schemas import names
from schemas._base import utcnow
from tests.integration.test_security import H_ACME, H_ADMIN, H_GLOBEX, PENGUIN, assert_error, make_api


@pytest.fixture(scope="module")
def db(emulator_stack):
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


@pytest.fixture
def tenants(emulator_stack, monkeypatch, tmp_path, clean_firestore, drain_jobs):
    client, _ = make_api(monkeypatch, tmp_path)
    return client


def finish_image(db, job_id: str) -> str:
    """Finish an image job as the runner does: the variant document, the prompt's index, the job's result."""
    ref = db.collection(names.JOBS).document(job_id)
    spec, now = ref.get().to_dict()["request"], utcnow()
    variant = {"variant_id": spec["variant_id"], "pk": spec["pk"], "soul_id": spec["soul_id"],
               "variant_index": spec["variant_index"],
               "object": names.image_object(spec["soul_id"], spec["pk"], spec["variant_id"]), "width": 64,
               "height": 64, "seed": spec["seed"], "bytes": 10, "job_id": job_id, "cue": spec["cue"],
               "created_at": now}
    db.collection(names.VARIANTS).document(spec["variant_id"]).set(variant)
    db.collection(names.PROMPTS).document(spec["pk"]).update({"variant_ids": firestore.ArrayUnion([spec["variant_id"]])})
    result = {k: variant[k] for k in ("variant_id", "pk", "object", "width", "height", "seed", "bytes", "created_at")}
    ref.update({"status": "succeeded", "stage": "done", "progress": 1.0, "started_at": now, "finished_at": now,
                "result": {"kind": "image", "render_seconds": 0.1, **result}})
    return spec["variant_id"]


def finish_video(db, job_id: str, variant_id: str) -> None:
    now = utcnow()
    outputs = [{"format": fmt, "object": f"videos/{variant_id}/{job_id}.{fmt}", "content_type": f"image/{fmt}",
                "bytes": 10} for fmt in ("gif", "webp")]
    db.collection(names.JOBS).document(job_id).update({
        "status": "succeeded", "stage": "done", "progress": 1.0, "started_at": now, "finished_at": now,
        "result": {"kind": "video", "variant_id": variant_id, "num_frames": 4, "fps": 7, "outputs": outputs,
                   "render_seconds": 0.1}})


def test_static_videos_follow_the_visibility_of_tasks(tenants, db):
    asked = tenants.get("/image", query_string=PENGUIN, headers=H_ACME).json
    variant_id = finish_image(db, asked["task_id"])
    video = tenants.post("/video/generate-from-variant", query_string={"variant_id": variant_id}, headers=H_ACME)
    assert video.status_code in (200, 202), video.json
    task_id = video.json["task_id"]
    finish_video(db, task_id, variant_id)
    mine = tenants.get(f"/static/videos/{task_id}.gif", headers=H_ACME)
    assert mine.status_code == 302 and "X-Goog-Signature" in mine.headers["Location"]
    # The video task id is a hash of public values: globex can compute it, and still gets nothing.
    assert tenants.get(f"/tasks/{task_id}", headers=H_GLOBEX).status_code == 404
    for fmt in ("gif", "webp"):
        theirs = tenants.get(f"/static/videos/{task_id}.{fmt}", headers=H_GLOBEX)
        assert_error(theirs, 404, "not_found")
        assert "Location" not in theirs.headers


def test_a_tenant_that_canceled_a_shared_animation_gets_none_of_its_files(tenants, db):
    """It read the task canceled with no result, and still got a signed URL of the finished GIF."""
    asked = tenants.get("/image", query_string=PENGUIN, headers=H_ACME).json
    variant_id = finish_image(db, asked["task_id"])
    query = {"variant_id": variant_id, "num_frames": 16}
    task_id = tenants.post("/video/generate-from-variant", query_string=query, headers=H_ACME).json["task_id"]
    joined = tenants.post("/video/generate-from-variant", query_string=query, headers=H_GLOBEX)
    assert joined.json["task_id"] == task_id
    assert tenants.delete(f"/tasks/{task_id}", headers=H_GLOBEX).status_code == 200
    finish_video(db, task_id, variant_id)
    assert tenants.get(f"/tasks/{task_id}", headers=H_GLOBEX).json["status"] == "canceled"
    for fmt in ("gif", "mp4", "webp"):
        assert_error(tenants.get(f"/static/videos/{task_id}.{fmt}", headers=H_GLOBEX), 404, "not_found")
    assert tenants.get(f"/static/videos/{task_id}.gif", headers=H_ACME).status_code == 302


def test_static_image_listing_shows_only_this_tenants_images(tenants, db):
    acme_job = tenants.get("/image", query_string=PENGUIN, headers=H_ACME).json["task_id"]
    globex_job = tenants.get("/image", query_string={**PENGUIN, "cue": "zebra"}, headers=H_GLOBEX).json["task_id"]
    # Globex also waits on acme's walrus: a job it joined shows to it, as in /tasks.
    shared = tenants.get("/image", query_string={**PENGUIN, "cue": "walrus"}, headers=H_ACME).json["task_id"]
    assert tenants.get("/image", query_string={**PENGUIN, "cue": "walrus"}, headers=H_GLOBEX).json["task_id"] == shared
    acme_variant, globex_variant = finish_image(db, acme_job), finish_image(db, globex_job)
    shared_variant = finish_image(db, shared)
    listed = {t: sorted(v["variant_id"] for v in tenants.get("/static/images", headers=h).json["items"])
              for t, h in (("acme", H_ACME), ("globex", H_GLOBEX))}
    assert listed == {"acme": sorted([acme_variant, shared_variant]),
                      "globex": sorted([globex_variant, shared_variant])}
    for tenant, headers in (("acme", H_ACME), ("globex", H_GLOBEX)):
        visible = {t["task_id"] for t in tenants.get("/tasks", headers=headers).json["items"]}
        assert len(visible) == len(listed[tenant])


def test_a_cursor_outside_the_callers_results_answers_as_a_missing_one(tenants, db):
    mine = [tenants.get("/image", query_string={**PENGUIN, "cue": cue}, headers=H_ACME).json["task_id"]
            for cue in ("penguin", "zebra")]
    theirs = tenants.get("/image", query_string={**PENGUIN, "cue": "walrus"}, headers=H_GLOBEX).json["task_id"]
    fine = tenants.get("/tasks", query_string={"cursor": mine[1], "page_size": 1}, headers=H_ACME)
    assert fine.status_code == 200
    missing = tenants.get("/tasks", query_string={"cursor": "img-" + "0" * 32 + "-0"}, headers=H_ACME)
    foreign = tenants.get("/tasks", query_string={"cursor": theirs}, headers=H_ACME)
    assert_error(missing, 400, "invalid_argument")
    assert_error(foreign, 400, "invalid_argument")
    assert foreign.json == missing.json  # one answer: a cursor tells nothing about other tenants' jobs
    # Within the caller's own results means within this very query, filters included (a status filter applies
    # to the jobs read, so a cursor is a position among the tenant's records whatever its job's status).
    assert tenants.get("/tasks", query_string={"cursor": mine[0], "status": "succeeded"},
                       headers=H_ACME).status_code == 200
    assert_error(tenants.get("/tasks", query_string={"cursor": mine[0], "type": "video"}, headers=H_ACME), 400)
    # Listings of images: a cursor of another tenant's finished job is refused the same way.
    finish_image(db, theirs)
    assert_error(tenants.get("/static/images", query_string={"cursor": theirs}, headers=H_ACME), 400)


def walk(client, path: str, query: dict) -> list[dict]:
    """Every item of a listing, following `next_cursor` as a client does (each page must be accepted)."""
    items, cursor = [], None
    for _ in range(50):
        response = client.get(path, query_string={**query, **({"cursor": cursor} if cursor else {})}, headers=H_ACME)
        assert response.status_code == 200, (cursor, response.json)
        items += response.json["items"]
        cursor = response.json["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the listing did not end")


def test_filtered_listings_take_back_every_cursor_they_give_and_fill_their_pages(tenants, db):
    """The defect: a status-filtered listing (and /static/images) gave out the last record it scanned as the
    cursor, then refused it when that job was in another status: the tasks behind it could not be reached."""
    asked = [tenants.get("/image", query_string={**PENGUIN, "cue": f"cue{n}"}, headers=H_ACME).json["task_id"]
             for n in range(12)]
    done = {job_id for n, job_id in enumerate(asked) if n % 3 == 0}  # newest first: queued ones lie between them
    for job_id in done:
        finish_image(db, job_id)
    canceled = asked[1]
    assert tenants.delete(f"/tasks/{canceled}", headers=H_ACME).status_code == 200
    succeeded = walk(tenants, "/tasks", {"status": "succeeded", "page_size": 2})
    assert {t["task_id"] for t in succeeded} == done
    assert [t["task_id"] for t in walk(tenants, "/tasks", {"status": "canceled", "page_size": 1})] == [canceled]
    queued = walk(tenants, "/tasks", {"status": "queued", "page_size": 3})
    assert {t["task_id"] for t in queued} == set(asked) - done - {canceled}
    images = walk(tenants, "/static/images", {"page_size": 1})
    assert len(images) == len(done)
    # A page is filled from a bounded scan of records: the first page of two holds two (cue9, cue6).
    first = tenants.get("/tasks", query_string={"status": "succeeded", "page_size": 2}, headers=H_ACME).json
    assert len(first["items"]) == 2 and first["next_cursor"] is not None


@pytest.mark.parametrize("cue", ["\ufdfa" * 28, "\u3300" * 200, "\ufdfa" * 12 + " penguin"])
def test_the_cue_bound_holds_after_normalization_and_nothing_is_written(tenants, db, cue):
    for call in (lambda: tenants.get("/image", query_string={**PENGUIN, "cue": cue}, headers=H_ACME),
                 lambda: tenants.post("/image", json={**PENGUIN, "cue": cue}, headers=H_ACME),
                 lambda: tenants.post("/image/warm", json={"soul_id": "nova", "cue": cue, "variants": 1},
                                      headers=H_ADMIN)):
        response = call()
        assert_error(response, 400, "invalid_argument")
        assert response.json["error"]["field"] == "cue" and "normalized" in response.json["error"]["message"]
    for collection in (names.PROMPTS, names.JOBS, names.WARM_POOL):
        assert list(db.collection(collection).stream()) == [], collection


def test_info_shows_infrastructure_only_to_admins(tenants):
    client_view = tenants.get("/info", headers=H_ACME)
    assert client_view.status_code == 200
    assert client_view.json.get("backends") is None and client_view.json.get("configuration") is None
    text = client_view.get_data(as_text=True)
    for address in (os.environ["FIRESTORE_EMULATOR_HOST"], os.environ["PUBSUB_EMULATOR_HOST"],
                    os.environ["STORAGE_EMULATOR_HOST"].split("//")[-1]):
        assert address not in text
    admin_view = tenants.get("/info", headers=H_ADMIN).json
    assert "emulator" in admin_view["backends"]["firestore"] and admin_view["configuration"]["bucket"]


def test_wrong_keys_are_rate_limited_per_source(emulator_stack, monkeypatch, tmp_path, clean_firestore):
    client, api = make_api(monkeypatch, tmp_path, SOUL_AUTH_FAILURE_BURST="5", SOUL_AUTH_FAILURES_PER_MINUTE="6",
                           SOUL_TRUSTED_PROXY_HOPS="1")
    guesser = {"X-Forwarded-For": "203.0.113.7"}
    answers = [client.get("/me", headers={**guesser, "X-API-Key": f"guess-{n:04d}"}).status_code for n in range(40)]
    assert answers[:5] == [403] * 5 and set(answers[6:]) == {429}
    held = client.get("/me", headers={**guesser, "X-API-Key": f"guess-x"})
    assert_error(held, 429, "auth_rate_limited")
    assert int(held.headers["Retry-After"]) >= 1
    # While held back, a right key from that source looks like a wrong one (no oracle).
    assert client.get("/me", headers={**guesser, "X-API-Key": "acme-client-key-0001"}).status_code == 429
    # Other sources are not held back, and no Firestore document was read or written for the guesses.
    other = client.get("/me", headers={"X-Forwarded-For": "198.51.100.9", **H_ACME})
    assert other.status_code == 200 and other.json["tenant"] == "acme"
    assert client.get("/me", headers={"X-Forwarded-For": "198.51.100.10", "X-API-Key": "nope"}).status_code == 403


def test_options_answers_like_every_other_route(api_app, clean_firestore):
    client = api_app.test_client()
    for path, allowed in (("/static/videos/x.gif", "GET, OPTIONS"), ("/static/images", "GET, OPTIONS"),
                          ("/image", "GET, OPTIONS, POST"), ("/healthz", "GET, HEAD, OPTIONS"),
                          ("/tasks/abc", "DELETE, GET, OPTIONS")):
        response = client.options(path)
        assert response.status_code == 204, (path, response.status_code, response.data)
        assert response.headers["Allow"] == allowed, path
        assert response.data == b"" and response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Security-Policy" in response.headers and "X-Request-Id" in response.headers
        assert "Access-Control-Allow-Origin" not in response.headers  # no CORS: a preflight fails closed
    unknown = client.options("/nowhere")
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "not_found"
    assert unknown.headers["X-Content-Type-Options"] == "nosniff"


def test_every_405_says_the_allow_list_options_says(api_app, clean_firestore):
    client = api_app.test_client()
    for method, path in (("PUT", "/tasks"), ("HEAD", "/tasks"), ("HEAD", "/image"), ("PUT", "/image"),
                         ("POST", "/healthz"), ("PATCH", "/tasks/abc")):
        response = client.open(path, method=method)
        assert response.status_code == 405, (method, path)
        allowed = response.headers["Allow"]
        assert allowed == client.options(path).headers["Allow"], (method, path)
        if method != "HEAD":
            assert response.json["error"]["message"].endswith(f"use {allowed}")
