"""Issue 13: a garbled or forged message on soul-jobs never changes someone else's job. The message is
dead-lettered with its reason; the job it names (running on another runner, or still queued) is untouched by it
and ends succeeded."""

from __future__ import annotations

import json
import threading
import time

import pytest

from gpu_runner.adapters.clients import make_clients
from gpu_runner.pipelines.host import ModelHost
from gpu_runner.worker import Runner
from schemas import names
from tests.integration.test_runner import (  # noqa: F401 - fixtures
    PENGUIN,
    db,
    job_doc,
    models,
    publish_raw,
    run_runner,
    runner_settings,
)
from tests.support import pull_all

# Fields a live lease keeps moving (heartbeat renewals); everything else must not change because of the poison.
_MOVING = {"lease_expires_at", "updated_at"}


class GatedModels(ModelHost):
    """The real tiny model, handed out only once the test opens the gate: the job stays claimed meanwhile."""

    def __init__(self, settings, gate: threading.Event, loading: threading.Event):
        super().__init__(settings)
        self._gate, self._loading = gate, loading

    def sdxl(self):
        self._loading.set()
        assert self._gate.wait(60), "the test never opened the gate"
        return super().sdxl()


def garbled(job_id: str) -> tuple[bytes, dict]:
    body = json.dumps({"schema_version": 2, "job_id": job_id, "type": "image"}).encode()
    return body, {"job_id": job_id}


def wrong_type(job_id: str) -> tuple[bytes, dict]:
    return json.dumps({"schema_version": 1, "job_id": job_id, "type": "video"}).encode(), {"job_id": job_id}


def stable(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in _MOVING}


def pull_one(subscriber, subscription: str):
    [received] = pull_all(subscriber, subscription, ack=False, rounds=3)
    return received


@pytest.mark.parametrize("poison", [garbled, wrong_type])
def test_poison_naming_a_running_job_leaves_it_alone(api, run_runner, runner_settings, db, subscriber, poison):
    queued = api.get("/image", query_string=PENGUIN).json
    job_id = queued["task_id"]
    held = pull_one(subscriber, names.SUB_RUNNER)
    gate, loading = threading.Event(), threading.Event()
    owner = Runner(runner_settings.model_copy(update={"runner_id": "runner-owner"}),
                   make_clients(runner_settings), GatedModels(runner_settings, gate, loading))
    worker = threading.Thread(target=owner.handle, args=(held,), daemon=True)
    worker.start()
    try:
        assert loading.wait(60), "the owner never started the job"
        deadline = time.monotonic() + 30
        while (before := job_doc(db, job_id))["stage"] != "loading_model":  # its stage write is asynchronous
            assert time.monotonic() < deadline, before
            time.sleep(0.02)
        assert before["status"] == "running" and before["lease_owner"] == "runner-owner"

        body, attributes = poison(job_id)
        publish_raw(body, **attributes)
        run_runner(runner_settings.model_copy(update={"runner_id": "runner-other"}))

        assert stable(job_doc(db, job_id)) == stable(before)
    finally:
        gate.set()
        worker.join(60)
    [dead] = pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER)
    assert dead.message.data == body and dead.message.attributes["soul-dead-letter-reason"]
    done = job_doc(db, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["error"] is None
    events = pull_all(subscriber, names.SUB_EVENTS)
    assert [e.message.attributes["ce-type"] for e in events] == [names.EVENT_JOB_SUCCEEDED]


@pytest.mark.parametrize("poison", [garbled, wrong_type])
def test_poison_naming_a_queued_job_leaves_it_alone(api, run_runner, runner_settings, models, db, subscriber,
                                                   poison):
    queued = api.get("/image", query_string=PENGUIN).json
    job_id = queued["task_id"]
    held = pull_one(subscriber, names.SUB_RUNNER)  # the job's own message waits while the poison is handled
    before = job_doc(db, job_id)

    body, attributes = poison(job_id)
    publish_raw(body, **attributes)
    run_runner()

    assert job_doc(db, job_id) == before  # not a single field written
    [dead] = pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER)
    assert dead.message.data == body and dead.message.attributes["soul-dead-letter-reason"]
    assert pull_all(subscriber, names.SUB_EVENTS) == []

    Runner(runner_settings, make_clients(runner_settings), models).handle(held)
    done = job_doc(db, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["error"] is None
