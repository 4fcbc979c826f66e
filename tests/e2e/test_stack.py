"""End to end, on the stack started the way `make run` starts it: the seed's curl, the PNG through its signed URL,
dedup for a second user, the completion event, a request through Pub/Sub (ingest), and cancel mid-run."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import pytest
import requests
from google.cloud import pubsub_v1

from schemas import names
from tests.support import pull_all

pytestmark = pytest.mark.e2e


@contextmanager
def emulator_env(env: dict):
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def poll_task(base: str, task_id: str, timeout_s: float = 120) -> tuple[dict, list[tuple[str, float]]]:
    """Poll until the task ends; returns the final task and every (status, progress) observed."""
    seen: list[tuple[str, float]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = requests.get(f"{base}/tasks/{task_id}", timeout=10).json()
        if not seen or seen[-1] != (task["status"], task["progress"]):
            seen.append((task["status"], task["progress"]))
        if task["status"] in ("succeeded", "failed", "canceled"):
            return task, seen
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish: {seen}")


def test_the_seed_curl_travels_the_whole_pipeline(stack):
    base = stack["base"]
    started = time.perf_counter()
    queued = requests.get(f"{base}/image?soul_id=nova&cue=penguin&user_id=user123", timeout=10)
    assert queued.status_code == 202
    body = queued.json()
    assert set(body) >= {"status", "task_id", "pk_id", "status_url", "estimated_seconds"}
    assert body["status"] == "queued" and body["status_url"] == f"{base}/tasks/{body['task_id']}"

    task, seen = poll_task(base, body["task_id"])
    # The 202 said queued; an idle runner may claim the job before the first poll, so polls may start at running.
    statuses = [body["status"]] + [s for s, _ in seen]
    assert statuses[0] == "queued" and statuses[1] in ("queued", "running") and "running" in statuses and statuses[-1] == "succeeded", seen
    progress = [p for s, p in seen if s == "running"]
    assert progress == sorted(progress) and all(0 <= p <= 1 for p in progress) and len(set(progress)) > 1, seen
    png = requests.get(task["result"]["variant"]["url"], timeout=10)
    elapsed = time.perf_counter() - started
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG\r\n\x1a\n")
    print(f"\nrequest -> downloadable PNG: {elapsed:.2f} s (tiny SDXL, 30 steps, 256x256)")

    again = requests.get(f"{base}/image?soul_id=nova&cue=penguin&user_id=user123", timeout=10)
    assert again.status_code == 200 and again.json()["status"] == "ready"
    variant = again.json()["variant"]
    assert variant["variant_id"] == task["result"]["variant"]["variant_id"]
    assert set(variant) == {"variant_id", "pk_id", "url", "expires_at", "width", "height", "seed", "created_at",
                            "safety", "reproducibility", "original_url"}
    assert variant["original_url"] is None  # policy `flag`: no blurred rendition, no original to hand out
    assert variant["reproducibility"]["seed"] == variant["seed"]
    other = requests.get(f"{base}/image", params={"soul_id": "nova", "cue": " Penguin! ", "user_id": "u2"}, timeout=10)
    assert other.status_code == 200 and other.json()["variant"]["variant_id"] == variant["variant_id"]
    posted = requests.post(f"{base}/image", json={"soul_id": "nova", "cue": "PENGUIN", "user_id": "u3"}, timeout=10)
    assert posted.status_code == 200 and posted.json()["variant"]["variant_id"] == variant["variant_id"]
    tasks = requests.get(f"{base}/tasks", params={"soul_id": "nova", "page_size": 100}, timeout=10).json()["items"]
    assert [t["task_id"] for t in tasks if t["task_id"].startswith(f"img-{body['pk_id']}")] == [body["task_id"]]

    with emulator_env(stack["env"]):
        subscriber = pubsub_v1.SubscriberClient()
        events = pull_all(subscriber, names.SUB_EVENTS, ack=False)
    done = [e for e in events if e.message.attributes.get("ce-id") == body["task_id"]]
    assert done and done[0].message.attributes["ce-type"] == names.EVENT_JOB_SUCCEEDED
    assert json.loads(done[0].message.data)["result"]["variant_id"] == variant["variant_id"]


def test_a_request_published_on_soul_requests_becomes_an_image(stack):
    with emulator_env(stack["env"]):
        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(stack["env"]["GCS_PROJECT_ID"], names.TOPIC_REQUESTS)
        request = {"soul_id": "mira", "cue": "lighthouse", "user_id": "svc-user"}
        publisher.publish(topic, json.dumps(request).encode(), type="image", request_id="req-1").result()
        publisher.publish(topic, b'{"soul_id": "nobody", "cue": "x", "user_id": "u"}', request_id="req-2").result()
        subscriber = pubsub_v1.SubscriberClient()
        outcomes: dict[str, dict] = {}
        finished: dict[str, dict] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ("req-2" in outcomes and finished):
            for event in pull_all(subscriber, names.SUB_EVENTS, rounds=1):
                attrs, data = event.message.attributes, json.loads(event.message.data)
                if attrs["ce-type"] in (names.EVENT_REQUEST_ACCEPTED, names.EVENT_REQUEST_REJECTED):
                    outcomes[attrs["ce-id"]] = data
                elif "req-1" in outcomes and attrs["ce-id"] == outcomes["req-1"]["answer"].get("task_id"):
                    finished[attrs["ce-id"]] = data
            time.sleep(0.2)
    assert outcomes["req-1"]["accepted"] is True and outcomes["req-1"]["answer"]["status"] == "queued"
    assert outcomes["req-2"]["accepted"] is False and outcomes["req-2"]["error"]["code"] == "not_found"
    [event] = finished.values()
    assert event["status"] == "succeeded"
    url = requests.get(f"{stack['base']}/tasks/{event['job_id']}", timeout=10).json()["result"]["variant"]["url"]
    assert requests.get(url, timeout=10).content.startswith(b"\x89PNG")


def test_cancel_a_running_task(stack):
    base = stack["base"]
    task_id = requests.get(f"{base}/image?soul_id=atlas&cue=glacier&user_id=u9", timeout=10).json()["task_id"]
    deadline = time.monotonic() + 60
    while requests.get(f"{base}/tasks/{task_id}", timeout=10).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    answer = requests.delete(f"{base}/tasks/{task_id}", timeout=10)
    assert answer.status_code == 202 and answer.json()["cancel_requested"] is True
    task, _ = poll_task(base, task_id, timeout_s=30)
    assert task["status"] == "canceled" and task["result"] is None
    assert requests.delete(f"{base}/tasks/{task_id}", timeout=10).status_code == 409


def curl(*args: str) -> tuple[int, dict]:
    """Run a curl line from the original README, as written; returns (status, JSON body)."""
    import subprocess

    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30)
    body, _, status = out.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_the_seed_readme_curls_replayed_as_written(stack):
    """The original README's examples with only the base URL swapped (localhost:8000 -> the stack)."""
    base = stack["base"]
    status, estimate = curl(f"{base}/video/estimate?num_frames=25")
    assert status == 200
    assert {k: estimate[k] for k in ("estimated_seconds", "estimated_minutes", "video_generation_seconds",
                                      "gif_conversion_seconds", "num_frames")} == {
        "estimated_seconds": 52.0, "estimated_minutes": 0.9, "video_generation_seconds": 50.0,
        "gif_conversion_seconds": 2.0, "num_frames": 25}  # the README's very figures, from configuration

    status, image = curl(f"{base}/image?soul_id=nova&cue=penguin&user_id=user123")
    assert status in (200, 202) and image["pk_id"]

    # The README converts a local file path; the pipeline never reads caller-given paths, and says so.
    status, error = curl("-X", "POST", f"{base}/video/generate", "-H", "Content-Type: application/json", "-d",
                         '{\n    "image_path": "generated_images/nova_xxx.png",\n    "generate_gif": true\n  }')
    assert status == 400 and error["error"]["field"] == "image_path"
    # "01K8XXX" is the README's placeholder: not a variant id.
    status, error = curl("-X", "POST", f"{base}/video/generate-from-variant?variant_id=01K8XXX&generate_gif=true")
    assert status == 400 and error["error"]["field"] == "variant_id"

    task, _ = poll_task(base, image["task_id"]) if status and image.get("task_id") else (None, None)
    variant_id = (task["result"]["variant"] if task else image["variant"])["variant_id"]
    status, video = curl("-X", "POST", f"{base}/video/generate-from-variant?variant_id={variant_id}&generate_gif=true")
    assert status == 202 and video["formats"] == ["gif", "mp4", "webp"]
    done, _ = poll_task(base, video["task_id"], timeout_s=180)
    assert done["status"] == "succeeded"
    gif = next(o for o in done["result"]["outputs"] if o["format"] == "gif")
    assert requests.get(gif["url"], timeout=10).content[:6] in (b"GIF89a", b"GIF87a")


def test_each_runner_of_make_run_answers_on_its_health_port(stack):
    """`make run` gave its runners no health port: the responder the instance group relies on went unexercised."""
    import re

    logged = (stack["workdir"] / "devstack.log").read_text()
    urls = re.findall(r"http://127\.0\.0\.1:[0-9]+/healthz", logged)
    assert urls, logged[-2000:]
    answer = requests.get(urls[0], timeout=5)
    assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text
    assert requests.get(urls[0].replace("/healthz", "/readyz"), timeout=5).json()["status"] == "ok"
