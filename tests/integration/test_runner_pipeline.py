"""Issue 7 and 12 on the emulators, in process: the pipelined runner claims the next job while one renders,
batches same-size image jobs (and only those), drops a canceled or stolen job from its batch alone, releases
claimed-but-unstarted jobs at once on stop, and serves the interactive lane before the background backlog."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from gpu_runner.adapters.clients import make_clients
from gpu_runner.worker import Runner
from schemas import names
from tests.integration.test_runner import PENGUIN, db, job_doc, models, runner_settings  # noqa: F401 - fixtures
from tests.integration.test_runner_poison import GatedModels
from tests.support import pull_all


def ask(api, cue: str) -> str:
    return api.get("/image", query_string={**PENGUIN, "cue": cue}).json["task_id"]


def wait_for(predicate, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Serving:
    """A Runner serving in a thread (burst mode: it returns once the lanes are drained)."""

    def __init__(self, settings, model_host):
        self.runner = Runner(settings, make_clients(settings), model_host)
        self.thread = threading.Thread(target=self.runner.run, kwargs={"burst": True}, daemon=True)
        self.thread.start()

    def join(self, timeout_s: float = 120) -> Runner:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the runner did not drain"
        return self.runner


@pytest.fixture
def gated(runner_settings):
    gate, loading = threading.Event(), threading.Event()
    yield GatedModels(runner_settings, gate, loading), gate
    gate.set()


def status(db, job_id: str) -> str:
    return job_doc(db, job_id)["status"]


def test_intake_claims_the_next_job_while_one_renders(api, runner_settings, gated, db):
    first, second = ask(api, "penguin"), ask(api, "owl")
    host, gate = gated
    serving = Serving(runner_settings.model_copy(update={"lookahead": 1, "max_batch": 1}), host)
    wait_for(lambda: status(db, first) == "running" and status(db, second) == "running", "both claimed")
    assert job_doc(db, second)["stage"] == "starting"  # claimed, waiting for the device, lease kept alive
    gate.set()
    serving.join()
    done = [job_doc(db, job_id) for job_id in (first, second)]
    assert [d["status"] for d in done] == ["succeeded", "succeeded"]
    assert [d["metrics"]["batch_size"] for d in done] == [1, 1]
    assert all(d["metrics"]["gpu_seconds"] > 0 and d["metrics"]["model"] == "tiny-sdxl" for d in done)


def test_same_size_jobs_share_a_pipeline_call_and_others_do_not(api, runner_settings, gated, db):
    same = [ask(api, cue) for cue in ("penguin", "owl", "lynx")]
    other = ask(api, "heron")
    db.collection(names.JOBS).document(other).update({"request.width": 512})  # renders at another size
    host, gate = gated
    serving = Serving(runner_settings.model_copy(update={"lookahead": 3, "max_batch": 4}), host)
    wait_for(lambda: all(status(db, j) == "running" for j in [*same, other]), "all four claimed")
    gate.set()
    serving.join()
    docs = {job_id: job_doc(db, job_id) for job_id in [*same, other]}
    assert all(d["status"] == "succeeded" for d in docs.values())
    assert sorted(d["metrics"]["batch_size"] for d in docs.values()) == [1, 3, 3, 3]
    assert docs[other]["metrics"]["batch_size"] == 1
    shares = {round(docs[j]["metrics"]["gpu_seconds"], 4) for j in same}
    assert len(shares) == 1  # one call's device time, split evenly
    variants = {d["result"]["variant_id"] for d in docs.values()}
    assert len(variants) == 4 and len(list(db.collection(names.VARIANTS).stream())) == 4


def test_a_canceled_and_a_stolen_job_drop_out_of_their_batch_alone(api, runner_settings, gated, db, subscriber):
    canceled, stolen, kept = (ask(api, cue) for cue in ("penguin", "owl", "lynx"))
    host, gate = gated
    settings = runner_settings.model_copy(update={"lookahead": 2, "max_batch": 3, "tiny_max_steps": 40})
    serving = Serving(settings, host)
    wait_for(lambda: all(status(db, j) == "running" for j in (canceled, stolen, kept)), "all three claimed")
    gate.set()
    wait_for(lambda: job_doc(db, kept)["stage"] == "denoising", "the batch to be denoising")
    jobs = db.collection(names.JOBS)
    jobs.document(canceled).update({"cancel_requested": True})
    thief = {"lease_owner": "thief", "lease_generation": job_doc(db, stolen)["lease_generation"] + 1}
    jobs.document(stolen).update(thief)
    runner = serving.join()

    assert job_doc(db, canceled)["status"] == "canceled"
    taken = job_doc(db, stolen)
    assert (taken["status"], taken["lease_owner"], taken["result"]) == ("running", "thief", None)
    done = job_doc(db, kept)
    assert done["status"] == "succeeded" and done["metrics"]["batch_size"] == 3
    assert [v.to_dict()["job_id"] for v in db.collection(names.VARIANTS).stream()] == [kept]
    events = {e.message.attributes["ce-id"]: e.message.attributes["ce-type"]
              for e in pull_all(subscriber, names.SUB_EVENTS)}
    assert events == {canceled: names.EVENT_JOB_CANCELED, kept: names.EVENT_JOB_SUCCEEDED}
    assert runner.jobs_done >= 3  # a redelivered duplicate (at least once) is acked and counted too


def test_stop_releases_a_claimed_job_at_once_and_another_runner_takes_it(api, runner_settings, models, gated, db):
    rendering, waiting = ask(api, "penguin"), ask(api, "owl")
    host, gate = gated
    serving = Serving(runner_settings.model_copy(update={"lookahead": 1, "max_batch": 1}), host)
    wait_for(lambda: status(db, rendering) == "running" and status(db, waiting) == "running", "both claimed")
    serving.runner.stop()
    released = wait_for(lambda: (d := job_doc(db, waiting))["status"] == "queued" and d, "the release", 10)
    assert released["lease_owner"] is None and released["stage"] == "retrying"
    assert status(db, rendering) == "running"  # the started one keeps its grace budget
    gate.set()
    serving.join()
    assert status(db, rendering) == "succeeded"

    other = Runner(runner_settings.model_copy(update={"runner_id": "runner-b"}), make_clients(runner_settings),
                   models)
    other.run(burst=True)
    taken = job_doc(db, waiting)
    assert taken["status"] == "succeeded" and taken["attempts"] == 2


@pytest.fixture
def background_lane(emulator_stack, subscriber):
    project = os.environ["GCS_PROJECT_ID"]
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(project, names.TOPIC_JOBS_BACKGROUND)
    path = subscriber.subscription_path(project, names.SUB_RUNNER_BACKGROUND)
    for create in (lambda: publisher.create_topic(request={"name": topic}),
                   lambda: subscriber.create_subscription(request={"name": path, "topic": topic})):
        try:
            create()
        except gexc.AlreadyExists:
            pass
    pull_all(subscriber, names.SUB_RUNNER_BACKGROUND)
    return lambda job_id: publisher.publish(
        topic, json.dumps({"schema_version": 1, "job_id": job_id, "type": "image"}).encode(), job_id=job_id
    ).result()


def test_an_interactive_job_waits_at_most_one_background_render(api, runner_settings, models, db, subscriber,
                                                                background_lane):
    backlog = [ask(api, f"bird {i}") for i in range(20)]
    pull_all(subscriber, names.SUB_RUNNER)
    for job_id in backlog:
        background_lane(job_id)
    settings = runner_settings.model_copy(update={"lookahead": 1, "max_batch": 1, "tiny_max_side": 64})
    serving = Serving(settings, models)
    started: list[tuple[float, list[str]]] = []
    render = serving.runner._render.render

    def recording(batch):
        started.append((time.monotonic(), [t.job.job_id for t in batch]))
        return render(batch)

    serving.runner._render.render = recording
    wait_for(lambda: len(started) >= 3, "the backlog to be rendering")
    asked_at = time.monotonic()
    interactive = ask(api, "urgent owl")
    runner = serving.join(300)

    assert runner.jobs_done == 21 and status(db, interactive) == "succeeded"
    order = [job_ids for _, job_ids in started]
    position = next(i for i, job_ids in enumerate(order) if interactive in job_ids)
    background_between = [ids for at, ids in started[:position] if at > asked_at]
    assert len(background_between) <= 1, order
    assert position < len(order) - 1, "the interactive job did not overtake the backlog"
