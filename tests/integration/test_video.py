"""Animations through the emulators with the tiny offline SDXL and SVD: GIF + MP4 + WebP from a variant, one job
per (variant, frames, fps, formats), cancel mid-run, the `image_path` rejection list, and estimates that switch
to the pace the runner measured."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import imageio_ffmpeg
import pytest
import requests
from PIL import Image

from gpu_runner.adapters.clients import make_clients
from gpu_runner.pipelines.host import ModelHost
from gpu_runner.settings import RunnerSettings
from gpu_runner.worker import Runner
from schemas import names
from tests.support import pull_all


@pytest.fixture(scope="module")
def video_settings(emulator_stack, tmp_path_factory):
    return RunnerSettings(
        model_cache_dir=tmp_path_factory.getbasetemp() / "models",
        pull_timeout_seconds=1.0, heartbeat_seconds=0.2, progress_interval_seconds=0.0,
        svd_image_width=96, svd_image_height=64, tiny_max_steps=4, tiny_svd_max_steps=4,
    )


@pytest.fixture(scope="module")
def video_models(video_settings):
    return ModelHost(video_settings)


def drain(settings, models) -> Runner:
    runner = Runner(settings, make_clients(settings), models)
    runner.run(burst=True)
    return runner


def make_variant(api, settings, models, cue="penguin") -> dict:
    queued = api.get("/image", query_string={"soul_id": "nova", "cue": cue, "user_id": "u"}).json
    drain(settings, models)
    return api.get(f"/tasks/{queued['task_id']}").json["result"]["variant"]


def test_a_variant_becomes_gif_mp4_and_webp(api, video_settings, video_models, tmp_path, subscriber):
    variant = make_variant(api, video_settings, video_models)
    answer = api.post("/video/generate-from-variant",
                      query_string={"variant_id": variant["variant_id"], "num_frames": 6, "generate_gif": "true"})
    assert answer.status_code == 202 and answer.json["formats"] == ["gif", "mp4", "webp"]
    drain(video_settings, video_models)
    task = api.get(f"/tasks/{answer.json['task_id']}").json
    assert task["status"] == "succeeded" and task["type"] == "video", task
    # the animation says its source's cue and the model that animated it (its GPU-seconds are the SVD's)
    assert task["cue"] == "penguin" and task["metrics"]["model"] == "tiny-svd", task
    outputs = {o["format"]: o for o in task["result"]["outputs"]}
    assert set(outputs) == {"gif", "mp4", "webp"}

    gif = Image.open(io.BytesIO(requests.get(outputs["gif"]["url"], timeout=10).content))
    assert gif.format == "GIF" and gif.n_frames == 6
    webp = Image.open(io.BytesIO(requests.get(outputs["webp"]["url"], timeout=10).content))
    assert webp.format == "WEBP" and webp.n_frames == 6
    mp4 = tmp_path / "out.mp4"
    mp4.write_bytes(requests.get(outputs["mp4"]["url"], timeout=10).content)
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    assert "h264" in meta["codec"] and sum(1 for _ in reader) == 6

    # The same request later: the same task, already done, with its result.
    again = api.post("/video/generate-from-variant", query_string={"variant_id": variant["variant_id"], "num_frames": 6})
    assert again.status_code == 200 and again.json["task_id"] == answer.json["task_id"]
    assert {o["format"] for o in again.json["result"]["outputs"]} == {"gif", "mp4", "webp"}
    redirect = api.get(f"/static/videos/{answer.json['task_id']}.gif")
    assert redirect.status_code == 302 and "X-Goog-Signature" in redirect.headers["Location"]
    events = [json.loads(e.message.data) for e in pull_all(subscriber, names.SUB_EVENTS)]
    assert any(e["job_id"] == answer.json["task_id"] and e["status"] == "succeeded" for e in events)

    # The runner measured its pace: the estimate now says so.
    estimate = api.get("/video/estimate", query_string={"num_frames": 6}).json
    assert estimate["source"] == "measured" and estimate["device"] == "cpu"


def test_concurrent_identical_video_requests_make_one_job(api, video_settings, video_models, subscriber):
    variant = make_variant(api, video_settings, video_models, cue="owl")
    pull_all(subscriber, names.SUB_RUNNER)
    query = {"variant_id": variant["variant_id"], "num_frames": 4, "generate_gif": "false"}
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: api.post("/video/generate-from-variant", query_string=query), range(10)))
    assert {a.json["task_id"] for a in answers} == {answers[0].json["task_id"]}
    assert answers[0].json["formats"] == ["mp4", "webp"]
    assert len(pull_all(subscriber, names.SUB_RUNNER)) == 1
    other_frames = api.post("/video/generate-from-variant", query_string={**query, "num_frames": 5}).json
    assert other_frames["task_id"] != answers[0].json["task_id"]


def test_cancel_an_animation_mid_run(api, video_settings, video_models):
    variant = make_variant(api, video_settings, video_models, cue="fox")
    slow = video_settings.model_copy(update={"tiny_svd_max_steps": 200})
    task_id = api.post("/video/generate-from-variant",
                       query_string={"variant_id": variant["variant_id"], "num_frames": 8}).json["task_id"]
    runner = Runner(slow, make_clients(slow), video_models)
    thread = threading.Thread(target=runner.run, kwargs={"burst": True})
    thread.start()
    deadline = time.monotonic() + 60
    while api.get(f"/tasks/{task_id}").json["stage"] != "denoising":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert api.delete(f"/tasks/{task_id}").status_code == 202
    thread.join(timeout=60)
    task = api.get(f"/tasks/{task_id}").json
    assert task["status"] == "canceled" and task["progress"] < 0.8 and task["result"] is None


@pytest.mark.parametrize(
    "image_path",
    [
        "/etc/passwd", "../../etc/passwd", "images/../../etc/passwd", "images/nova/%2e%2e/x.png",
        "..%2F..%2Fetc%2Fpasswd", "file:///etc/passwd", "http://169.254.169.254/computeMetadata/v1/",
        "https://example.com/a.png", "gs://other-bucket/images/nova/" + "a" * 32 + "/01J00000000000000000000000.png",
        "generated_images/nova_xxx.png", "images/nova/" + "a" * 32 + "/01J00000000000000000000000.png\n",
        "\\\\server\\share\\a.png", "images/nova/" + "a" * 32 + "/01J00000000000000000000000.png?x=1",
    ],
)
def test_image_paths_that_are_not_a_known_variant_are_refused_without_reading(api, image_path):
    response = api.post("/video/generate", json={"image_path": image_path})
    assert response.status_code == 400 and response.json["error"]["field"] == "image_path"


def test_image_path_of_a_known_variant_is_accepted(api, video_settings, video_models):
    variant = make_variant(api, video_settings, video_models, cue="cat")
    from google.cloud import firestore
    import os

    doc = firestore.Client(project=os.environ["GCS_PROJECT_ID"]).collection(names.VARIANTS).document(
        variant["variant_id"]).get().to_dict()
    for path in (doc["object"], f"gs://{os.environ['GCS_BUCKET_NAME']}/{doc['object']}"):
        answer = api.post("/video/generate", json={"image_path": path, "num_frames": 4})
        assert answer.status_code == 202, answer.json
    unknown = doc["object"].replace(variant["variant_id"], "01J00000000000000000000000")
    assert api.post("/video/generate", json={"image_path": unknown}).status_code == 400
