"""Issue 21 against the emulators with the tiny models: each content policy end to end (off, flag, blur, withhold)
with the tiny checker forced to flag by its threshold (SOUL_SAFETY_THRESHOLD, no code fork), the dedup hit of a
shared variant under every policy, a withheld variant unreachable through every endpoint of its tenant (image,
tasks, listings, static redirects, event stream, webhook body) and reachable for a tenant with `flag`, blocked terms
refused with a 422 before any job, and previews arriving over SSE in order while the runner denoises."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import flask
import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage
from PIL import Image

from gpu_runner.adapters.clients import make_clients as runner_clients
from gpu_runner.pipelines.host import ModelHost
from gpu_runner.settings import RunnerSettings
from gpu_runner.worker import Runner
from schemas import names
from tests.integration.test_task_events import parse

FLAG, BLUR, BLUR_ADMIN, HOLD, OFF = (f"{name}-key-000000001" for name in ("flag", "blur", "blurad", "hold", "off"))
H = {name: {"X-API-Key": key} for name, key in
     (("flag", FLAG), ("blur", BLUR), ("blur_admin", BLUR_ADMIN), ("hold", HOLD), ("off", OFF))}
PENGUIN = {"soul_id": "nova", "cue": "penguin", "user_id": "user123"}
ENTRIES = [
    {"tenant": "flagco", "key": FLAG},  # no policy of its own: the deployment's default (flag)
    {"tenant": "blurco", "key": BLUR, "content_policy": "blur"},
    {"tenant": "blurco", "role": "admin", "key_sha256": hashlib.sha256(BLUR_ADMIN.encode()).hexdigest()},
    {"tenant": "holdco", "key": HOLD, "content_policy": "withhold", "blocked_terms": ["Red Wine", "blood"]},
    {"tenant": "offco", "key": OFF, "content_policy": "off"},
]


@pytest.fixture(scope="module")
def db(emulator_stack):
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


@pytest.fixture(scope="module")
def bucket(emulator_stack):
    client = storage.Client(project=os.environ["GCS_PROJECT_ID"], credentials=AnonymousCredentials())
    return client.bucket(os.environ["GCS_BUCKET_NAME"])


@pytest.fixture
def api(emulator_stack, monkeypatch, tmp_path, clean_firestore, clean_bucket, drain_jobs):
    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.settings import FunctionsSettings

    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(ENTRIES))
    monkeypatch.delenv("SOUL_API_KEYS", raising=False)
    monkeypatch.setenv("SOUL_API_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("SOUL_SSE_POLL_INTERVAL_S", "0.05")
    settings = FunctionsSettings()
    served = Api(settings, make_clients(settings.project_id))
    app = flask.Flask("policies", static_folder=None)
    app.add_url_rule("/<path:path>", "all", lambda path: served(flask.request), methods=["GET", "POST", "DELETE"])
    client = app.test_client()
    client.services = served  # the wired services, for the webhook body check
    return client


def run(tmp_path_factory, **overrides) -> Runner:
    options = {"pull_timeout_seconds": 1.0, "heartbeat_seconds": 0.2, "progress_interval_seconds": 0.0,
               "lease_seconds": 30, "shutdown_grace_seconds": 5, **overrides}
    settings = RunnerSettings(model_cache_dir=tmp_path_factory.getbasetemp() / "models", **options)
    runner = Runner(settings, runner_clients(settings), ModelHost(settings))
    runner.run(burst=True)
    return runner


FORCED = {"safety_threshold": -3.0}  # the tiny checker's scores lie in [-2, 0]: everything is flagged


def strings_of(payload) -> str:
    return json.dumps(payload)


def test_each_policy_end_to_end_on_a_flagged_variant_shared_by_every_tenant(api, db, bucket, tmp_path_factory):
    queued = api.get("/image", query_string=PENGUIN, headers=H["flag"]).json
    run(tmp_path_factory, **FORCED)

    # flag: the original, with the verdict; the checker is counted in the metrics.
    task = api.get(f"/tasks/{queued['task_id']}", headers=H["flag"]).json
    assert task["status"] == "succeeded", task
    variant = task["result"]["variant"]
    assert variant["safety"]["flagged"] is True and variant["safety"]["model"] == "tiny-safety"
    assert variant["safety"]["blurred"] is False and variant["original_url"] is None
    assert task["metrics"]["safety_model"] == "tiny-safety" and task["metrics"]["safety_seconds"] > 0
    assert task["metrics"]["gpu_seconds"] >= task["metrics"]["safety_seconds"]
    original = names.image_object("nova", queued["pk_id"], variant["variant_id"])
    blurred = names.blurred_image_object("nova", queued["pk_id"], variant["variant_id"])
    assert original in variant["url"]
    doc = db.collection(names.VARIANTS).document(variant["variant_id"]).get().to_dict()
    assert doc["safety"]["flagged"] is True and doc["safety"]["blurred_object"] == blurred
    assert json.loads(bucket.get_blob(original).metadata["soul-safety"])["flagged"] is True
    assert Image.open(bucket.blob(blurred).open("rb")).size == (variant["width"], variant["height"])

    # blur, client key: the same variant (a dedup hit), served blurred; no way to the original.
    hit = api.get("/image", query_string=PENGUIN, headers=H["blur"])
    assert hit.status_code == 200 and hit.json["variant"]["variant_id"] == variant["variant_id"]
    assert blurred in hit.json["variant"]["url"] and hit.json["variant"]["safety"]["blurred"] is True
    assert original not in strings_of(hit.json).replace(blurred, "")
    assert hit.json["variant"]["original_url"] is None
    assert blurred in api.get(f"/static/image/{variant['variant_id']}.png", headers=H["blur"]).location
    # blur, admin key: the blurred URL and the original beside it.
    admin = api.get("/image", query_string=PENGUIN, headers=H["blur_admin"]).json["variant"]
    assert blurred in admin["url"] and original in admin["original_url"]

    # off: the original, no safety facts.
    off = api.get("/image", query_string=PENGUIN, headers=H["off"]).json["variant"]
    assert original in off["url"] and off["safety"] is None

    # withhold: the flagged variant is never its dedup hit; a new variant is made, flagged too, and withheld.
    held = api.get("/image", query_string=PENGUIN, headers=H["hold"])
    assert held.status_code == 202 and held.json["task_id"].endswith("-1"), held.json
    run(tmp_path_factory, **FORCED)
    task = api.get(f"/tasks/{held.json['task_id']}", headers=H["hold"]).json
    assert task["status"] == "succeeded" and task["result"]["variant"] is None
    withheld = task["result"]["withheld"]
    assert withheld["policy"] == "withhold" and "flagged" in withheld["reason"]
    second = withheld["variant_id"]

    # ... and unreachable through every endpoint of that tenant.
    for flagged_id in (variant["variant_id"], second):
        assert api.get(f"/static/image/{flagged_id}.png", headers=H["hold"]).status_code == 404
        assert api.get(f"/generated/{flagged_id}.png", headers=H["hold"]).status_code == 404
    assert api.get(f"/image/variants/{queued['pk_id']}", headers=H["hold"]).json["items"] == []
    assert api.get("/static/images", headers=H["hold"]).json["items"] == []
    again = api.get("/image", query_string=PENGUIN, headers=H["hold"])
    assert again.status_code == 202  # still nothing it may see: the next variant is queued
    listing = api.get("/tasks", headers=H["hold"]).json["items"]
    stream = "".join(c.decode() for c in api.get(f"/tasks/{held.json['task_id']}/events", headers=H["hold"],
                                                 buffered=False).response)
    end = [data for kind, data in parse(stream) if kind == "update"][-1]
    assert end["result"]["withheld"]["variant_id"] == second and end["result"]["variant"] is None
    animate = api.post("/video/generate-from-variant", query_string={"variant_id": second}, headers=H["hold"])
    assert animate.status_code == 422 and animate.json["error"]["code"] == "content_policy"
    for body in (task, listing, stream):
        assert "X-Goog-Signature" not in strings_of(body) and f"{second}.png" not in strings_of(body)

    # The same variants stay reachable for the tenant with `flag`.
    items = api.get(f"/image/variants/{queued['pk_id']}", headers=H["flag"]).json["items"]
    assert {i["variant_id"] for i in items} == {variant["variant_id"], second}
    assert api.get(f"/static/image/{second}.png", headers=H["flag"]).status_code == 302
    assert requests.get(items[0]["url"], timeout=10).status_code == 200


def test_webhook_bodies_follow_each_targets_policy(api, db, tmp_path_factory):
    from functions.services.webhook_delivery import outgoing

    queued = api.get("/image", query_string=PENGUIN, headers=H["flag"]).json
    run(tmp_path_factory, **FORCED)
    svc = api.services.services
    job = svc.jobs.job(queued["task_id"])
    message = {"attributes": {"ce-type": names.EVENT_JOB_SUCCEEDED, "ce-id": job.job_id},
               "data": __import__("base64").b64encode(json.dumps({"job_id": job.job_id}).encode()).decode()}

    def view(job_id, policy):
        return svc.tasks.view(svc.jobs.job(job_id), tenant="", viewer=__import__(
            "functions.core.content_policy", fromlist=["Viewer"]).Viewer(policy=policy)).model_dump(mode="json")

    out = outgoing(message, view)
    held = json.loads(out.body_for(svc.webhooks.content_policy("holdco")))["data"]["result"]
    flagged = json.loads(out.body_for(svc.webhooks.content_policy("flagco")))["data"]["result"]
    assert held["variant"] is None and held["withheld"]["policy"] == "withhold"
    assert flagged["variant"]["safety"]["flagged"] is True and flagged["variant"]["url"]
    assert "X-Goog-Signature" not in out.body_for("withhold").decode()


def test_unflagged_variants_reach_every_policy_at_the_default_threshold(api, tmp_path_factory):
    queued = api.get("/image", query_string=PENGUIN, headers=H["hold"]).json
    run(tmp_path_factory)  # SOUL_SAFETY_THRESHOLD=0: the tiny checker flags nothing
    task = api.get(f"/tasks/{queued['task_id']}", headers=H["hold"]).json
    assert task["result"]["variant"]["url"] and task["result"]["withheld"] is None
    for tenant in ("hold", "blur", "flag"):
        hit = api.get("/image", query_string=PENGUIN, headers=H[tenant])
        assert hit.status_code == 200 and hit.json["variant"]["variant_id"] == task["result"]["variant"]["variant_id"]
    assert api.get("/image", query_string=PENGUIN, headers=H["blur"]).json["variant"]["safety"]["flagged"] is False


def test_blocked_terms_are_a_422_naming_the_policy_before_any_job(api, db):
    for cue in ("a glass of RED  wine!", "Blood moon"):
        refused = api.post("/image", json={**PENGUIN, "cue": cue}, headers=H["hold"])
        assert refused.status_code == 422, refused.json
        error = refused.json["error"]
        assert error["code"] == "content_policy" and error["field"] == "cue" and "withhold" in error["message"]
    assert list(db.collection(names.JOBS).stream()) == [] and list(db.collection(names.PROMPTS).stream()) == []
    # Whole words only, and only for the tenant that blocks them.
    assert api.post("/image", json={**PENGUIN, "cue": "bloodhound"}, headers=H["hold"]).status_code == 202
    assert api.post("/image", json={**PENGUIN, "cue": "blood moon"}, headers=H["flag"]).status_code == 202


def test_previews_arrive_over_sse_in_order_and_stop_at_the_end(api, bucket, tmp_path_factory):
    queued = api.get("/image", query_string=PENGUIN, headers=H["flag"]).json
    assert api.get("/image", query_string=PENGUIN, headers=H["hold"]).json["task_id"] == queued["task_id"]
    streams: dict[str, str] = {}

    def follow(tenant: str) -> None:
        response = api.get(f"/tasks/{queued['task_id']}/events", headers=H[tenant], buffered=False)
        streams[tenant] = "".join(chunk.decode() for chunk in response.response)

    watchers = [threading.Thread(target=follow, args=(t,)) for t in ("flag", "hold")]
    for w in watchers:
        w.start()
    time.sleep(0.3)
    runner = run(tmp_path_factory, preview_every=2, tiny_max_steps=24, progress_interval_seconds=0.05)
    for w in watchers:
        w.join(timeout=60)
    assert runner.jobs_done == 1

    events = parse(streams["flag"])
    previews = [data for kind, data in events if kind == "preview"]
    assert previews, events
    steps = [p["step"] for p in previews]
    assert steps == sorted(set(steps)) and all(s % 2 == 0 and s < 24 for s in steps)
    assert all(p["steps"] == 24 and p["task_id"] == queued["task_id"] for p in previews)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "end" and "preview" not in kinds[kinds.index("end"):]
    first = requests.get(previews[0]["url"], timeout=10)
    image = Image.open(__import__("io").BytesIO(first.content))
    assert image.format == "WEBP" and max(image.size) <= 256
    assert bucket.get_blob(names.preview_object(queued["task_id"], steps[0])) is not None
    # A tenant whose policy withholds flagged images sees no preview (it comes before the verdict).
    assert [k for k, _ in parse(streams["hold"]) if k == "preview"] == []
    assert api.get(f"/tasks/{queued['task_id']}", headers=H["flag"]).json["preview"] is None  # finished


def test_a_rerun_keeps_the_verdict_the_upload_carries_and_scores_an_unscored_object(api, db, bucket,
                                                                                     tmp_path_factory):
    """A runner that died after the upload: the re-run takes the verdict from the object's metadata (here it would
    score differently: the threshold changed), and an earlier object without a verdict is scored, never trusted."""
    from datetime import timedelta

    from google.cloud import pubsub_v1

    from schemas._base import utcnow

    def crash_and_rerun(job_id: str, **overrides) -> dict:
        db.collection(names.JOBS).document(job_id).update(
            {"status": "running", "lease_owner": "dead-runner", "lease_expires_at": utcnow() - timedelta(seconds=1),
             "result": None, "event_published_at": None})
        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(os.environ["GCS_PROJECT_ID"], names.TOPIC_JOBS)
        publisher.publish(topic, json.dumps({"schema_version": 1, "job_id": job_id, "type": "image"}).encode()).result()
        run(tmp_path_factory, **overrides)
        return db.collection(names.JOBS).document(job_id).get().to_dict()

    queued = api.get("/image", query_string=PENGUIN, headers=H["flag"]).json
    run(tmp_path_factory, **FORCED)
    again = crash_and_rerun(queued["task_id"])  # threshold 0 now: a fresh score would not flag
    assert again["attempts"] == 2 and again["result"]["safety"]["flagged"] is True
    assert again["metrics"]["safety_seconds"] == 0.0  # nothing was scored again

    # An object from before the checker: no verdict in its metadata.
    variant_id = again["result"]["variant_id"]
    blob = bucket.blob(names.image_object("nova", queued["pk_id"], variant_id))
    png = blob.download_as_bytes()
    blob.delete()
    bucket.blob(blob.name).upload_from_string(png, content_type="image/png")
    rescored = crash_and_rerun(queued["task_id"], **FORCED)
    assert rescored["result"]["safety"]["flagged"] is True and rescored["metrics"]["safety_seconds"] > 0
    assert bucket.get_blob(rescored["result"]["safety"]["blurred_object"]) is not None


def test_another_tenants_image_of_a_blocked_cue_can_be_neither_listed_nor_animated(api, db):
    """holdco blocks "blood": an image another tenant made of "Blood moons" (the same word, inflected) is left
    out of holdco's variant listing and refused as the source of its animation; the other tenant has both."""
    from gpu_runner.adapters.jobstore import add_variant_writes
    from schemas._base import utcnow
    from schemas.documents import VariantDoc
    from schemas.ids import new_ulid
    from soul_common.firestore import Db

    pk, variant_id = "b" * 32, new_ulid()
    batch = Db(db).batch()
    add_variant_writes(batch, VariantDoc(
        variant_id=variant_id, pk=pk, soul_id="nova", variant_index=0, object=names.image_object("nova", pk, variant_id),
        width=64, height=64, seed=1, bytes=10, job_id=f"img-{pk}-0", cue="Blood moons", created_at=utcnow(),
    ), utcnow())
    batch.commit()
    assert api.get(f"/image/variants/{pk}", headers=H["hold"]).json["items"] == []
    assert [i["variant_id"] for i in api.get(f"/image/variants/{pk}", headers=H["flag"]).json["items"]] == [variant_id]
    refused = api.post("/video/generate-from-variant", query_string={"variant_id": variant_id}, headers=H["hold"])
    assert refused.status_code == 422 and refused.json["error"]["code"] == "content_policy"
    assert refused.json["error"]["field"] == "variant_id"
    allowed = api.post("/video/generate-from-variant", query_string={"variant_id": variant_id}, headers=H["flag"])
    assert allowed.status_code == 202, allowed.json
