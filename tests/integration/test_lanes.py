"""Job lanes on the producer side, against the emulators: a request that asks for the background lane is
published on soul-jobs-background (and only there); an interactive requester joining that queued job promotes it
to soul-jobs; plain requests stay interactive."""

from __future__ import annotations

import json
import os

from google.cloud import firestore

from schemas import names
from tests.support import pull_all

PENGUIN = {"soul_id": "nova", "cue": "penguin", "user_id": "user123"}


def lane_of(job_id: str) -> str:
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    return db.collection(names.JOBS).document(job_id).get().to_dict()["lane"]


def test_background_requests_go_to_the_background_topic_and_a_waiting_user_promotes_them(api, subscriber):
    pull_all(subscriber, names.SUB_RUNNER_BACKGROUND, rounds=2)
    asked = api.post("/image", json={**PENGUIN, "lane": "background"})
    assert asked.status_code == 202, asked.json
    task_id = asked.json["task_id"]
    [background] = pull_all(subscriber, names.SUB_RUNNER_BACKGROUND)
    assert json.loads(background.message.data)["job_id"] == task_id
    assert pull_all(subscriber, names.SUB_RUNNER) == []
    assert lane_of(task_id) == "background"

    joined = api.get("/image", query_string={**PENGUIN, "user_id": "waiting"})
    assert joined.json["task_id"] == task_id
    [promoted] = pull_all(subscriber, names.SUB_RUNNER)
    assert json.loads(promoted.message.data)["job_id"] == task_id
    assert lane_of(task_id) == "interactive"


def test_requests_are_interactive_unless_they_ask(api, subscriber):
    pull_all(subscriber, names.SUB_RUNNER_BACKGROUND, rounds=2)
    assert api.post("/image", json=PENGUIN).status_code == 202
    assert api.post("/image/selfie", json={"soul_id": "nova", "city_key": "paris", "mood": "happy",
                                           "user_id": "u2", "lane": "background"}).status_code == 202
    assert len(pull_all(subscriber, names.SUB_RUNNER)) == 1
    assert len(pull_all(subscriber, names.SUB_RUNNER_BACKGROUND)) == 1
    bad = api.post("/image", json={**PENGUIN, "lane": "express"})
    assert bad.status_code == 400 and bad.json["error"]["field"] == "lane"
