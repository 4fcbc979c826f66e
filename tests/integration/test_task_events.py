"""`GET /tasks/{id}/events` against the emulators: a client sees queued → running (with progress) → succeeded as
server-sent events, driven by writing the job document as the runner would, and the stream then closes."""

from __future__ import annotations

import json
import os
import threading
import time

from google.cloud import firestore

from schemas import names
from schemas._base import utcnow

PENGUIN = {"soul_id": "nova", "cue": "penguin", "user_id": "user123"}


def parse(stream: str) -> list[tuple[str, dict | str]]:
    events = []
    for block in stream.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_a_client_sees_queued_running_succeeded_and_the_stream_closes(api):
    task_id = api.get("/image", query_string=PENGUIN).json["task_id"]
    job = firestore.Client(project=os.environ["GCS_PROJECT_ID"]).collection(names.JOBS).document(task_id)

    def runner():  # each state lasts longer than the poll interval (0.5 s), as a render step would
        time.sleep(1.0)
        job.update({"status": "running", "stage": "denoise", "progress": 0.4, "eta_seconds": 2.0,
                    "started_at": utcnow()})
        time.sleep(1.0)
        job.update({"progress": 0.8, "eta_seconds": 1.0})
        time.sleep(1.0)
        job.update({"status": "succeeded", "stage": "done", "progress": 1.0, "eta_seconds": 0.0,
                    "finished_at": utcnow()})

    thread = threading.Thread(target=runner)
    thread.start()
    started = time.monotonic()
    response = api.get(f"/tasks/{task_id}/events", buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    body = "".join(chunk.decode() for chunk in response.response)  # returns only when the server closes it
    thread.join()
    assert time.monotonic() - started < 20
    events = parse(body)
    updates = [data for kind, data in events if kind == "update"]
    assert [u["status"] for u in updates] == ["queued", "running", "running", "succeeded"]
    assert [u["progress"] for u in updates] == [0.0, 0.4, 0.8, 1.0]
    assert updates[1]["stage"] == "denoise" and updates[1]["eta_seconds"] == 2.0
    assert events[-1] == ("end", {"status": "succeeded"})
    assert body.startswith("retry: ")


def test_events_of_an_unknown_task_are_a_404_in_the_error_shape(api):
    response = api.get("/tasks/img-00000000000000000000000000000000-0/events")
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"


def test_a_task_says_its_cue_on_get_and_in_listings(api):
    """The page's history shows each result's cue: an image task carries the cue it was asked with."""
    task_id = api.post("/image", json={**PENGUIN, "cue": "owl at night"}).json["task_id"]
    assert api.get(f"/tasks/{task_id}").json["cue"] == "owl at night"
    listed = api.get("/tasks", query_string={"user_id": "user123"}).json["items"]
    assert [t["cue"] for t in listed if t["task_id"] == task_id] == ["owl at night"]
