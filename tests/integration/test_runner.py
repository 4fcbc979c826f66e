"""The GPU runner in-process (burst mode, tiny offline SDXL) against the emulators: the whole image flow, per-user
delivery, idempotent re-runs, the error policy (dead letters, failures, retries), cancel, and the reconciler."""

from __future__ import annotations

import io
import json
import os
from datetime import timedelta

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage
from PIL import Image

from gpu_runner.adapters.clients import make_clients
from gpu_runner.errors import TransientError
from gpu_runner.pipelines.host import ModelHost
from soul_common.firestore import Db
from soul_common.reconciler import ReconcilePolicy, Reconciler
from soul_common.events import EventPublisher
from gpu_runner.settings import RunnerSettings
from gpu_runner.worker import Runner
from schemas import names
from schemas._base import utcnow
from schemas.documents import SeenDoc
from tests.support import pull_all

PENGUIN = {"soul_id": "nova", "cue": "penguin", "user_id": "user123"}


@pytest.fixture(scope="session")
def runner_settings(emulator_stack, tmp_path_factory):
    return RunnerSettings(
        model_cache_dir=tmp_path_factory.getbasetemp() / "models",
        pull_timeout_seconds=1.0,
        heartbeat_seconds=0.2,
        progress_interval_seconds=0.0,
        lease_seconds=30,
        shutdown_grace_seconds=5,
    )


@pytest.fixture(scope="session")
def models(runner_settings):
    return ModelHost(runner_settings)


@pytest.fixture
def run_runner(runner_settings, models):
    """Run the runner in burst mode until the subscription is drained; returns the Runner."""

    def run(settings: RunnerSettings | None = None, model_host=None) -> Runner:
        settings = settings or runner_settings
        runner = Runner(settings, make_clients(settings), model_host or models)
        runner.run(burst=True)
        return runner

    return run


@pytest.fixture(scope="session")
def db(emulator_stack):
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


@pytest.fixture(scope="session")
def bucket(emulator_stack):
    client = storage.Client(project=os.environ["GCS_PROJECT_ID"], credentials=AnonymousCredentials())
    return client.bucket(os.environ["GCS_BUCKET_NAME"])


def job_doc(db, job_id) -> dict:
    return db.collection(names.JOBS).document(job_id).get().to_dict()


def test_cue_becomes_a_png_and_is_delivered_per_user(api, run_runner, db, bucket, subscriber):
    queued = api.get("/image", query_string=PENGUIN).json
    runner = run_runner()
    assert runner.jobs_done == 1

    task = api.get(f"/tasks/{queued['task_id']}").json
    assert task["status"] == "succeeded", task
    assert task["progress"] == 1.0 and task["attempts"] == 1
    assert task["started_at"] and task["finished_at"]
    variant = task["result"]["variant"]
    png = requests.get(variant["url"], timeout=10).content
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (variant["width"], variant["height"])

    # The completion event, as a CloudEvent in binary mode.
    [event] = pull_all(subscriber, names.SUB_EVENTS)
    attrs = event.message.attributes
    assert attrs["ce-type"] == names.EVENT_JOB_SUCCEEDED and attrs["ce-id"] == queued["task_id"]
    assert attrs["ce-source"] == names.EVENT_SOURCE_RUNNER and attrs["ce-specversion"] == "1.0"
    body = json.loads(event.message.data)
    assert body["status"] == "succeeded" and body["result"]["variant_id"] == variant["variant_id"]

    # The same user again: the same variant, at once.
    again = api.get("/image", query_string=PENGUIN)
    assert again.status_code == 200 and again.json["status"] == "ready"
    assert again.json["variant"]["variant_id"] == variant["variant_id"]
    # Another user, differently typed: the same variant, no new job.
    other = api.get("/image", query_string={**PENGUIN, "user_id": "someone", "cue": " Penguin! "})
    assert other.status_code == 200 and other.json["variant"]["variant_id"] == variant["variant_id"]
    assert len(list(db.collection(names.JOBS).stream())) == 1

    # Once user123 has seen it, they get a new variant (a new job); others still get the first one.
    from functions.adapters.firestore.prompts import PromptStore

    PromptStore(Db(db)).mark_seen("user123", SeenDoc(variant_id=variant["variant_id"], pk=queued["pk_id"], soul_id="nova",
                                           seen_at=utcnow()))
    second = api.get("/image", query_string=PENGUIN)
    assert second.status_code == 202 and second.json["task_id"].endswith("-1")
    assert api.get("/image", query_string={**PENGUIN, "user_id": "someone"}).json["status"] == "ready"
    run_runner()
    fresh = api.get("/image", query_string=PENGUIN).json
    assert fresh["status"] == "ready" and fresh["variant"]["variant_id"] != variant["variant_id"]
    assert fresh["variant"]["seed"] != variant["seed"]
    prompt = db.collection(names.PROMPTS).document(queued["pk_id"]).get().to_dict()
    assert len(prompt["variant_ids"]) == 2
    assert len(list(bucket.list_blobs(prefix=f"images/nova/{queued['pk_id']}/"))) == 2


def test_a_rerun_after_a_crash_duplicates_nothing(api, run_runner, db, bucket, subscriber):
    """Simulate a runner that died after uploading: the job is running with an expired lease and its message
    comes again. The re-run must find the object, write the same variant, and finish the job once."""
    queued = api.get("/image", query_string=PENGUIN).json
    run_runner()
    first = job_doc(db, queued["task_id"])
    pull_all(subscriber, names.SUB_EVENTS)
    db.collection(names.JOBS).document(queued["task_id"]).update(
        {"status": "running", "lease_owner": "dead-runner", "lease_expires_at": utcnow() - timedelta(seconds=1),
         "result": None, "event_published_at": None}
    )
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(os.environ["GCS_PROJECT_ID"], names.TOPIC_JOBS)
    message = json.dumps({"schema_version": 1, "job_id": queued["task_id"], "type": "image"}).encode()
    publisher.publish(topic, message, job_id=queued["task_id"]).result()
    publisher.publish(topic, message, job_id=queued["task_id"]).result()  # and a duplicate delivery on top

    run_runner()
    second = job_doc(db, queued["task_id"])
    assert second["status"] == "succeeded" and second["attempts"] == 2
    assert second["result"]["variant_id"] == first["result"]["variant_id"]
    assert second["result"]["render_seconds"] < first["result"]["render_seconds"]  # render skipped
    assert len(list(bucket.list_blobs(prefix=f"images/nova/{queued['pk_id']}/"))) == 1
    assert len(list(db.collection(names.VARIANTS).stream())) == 1
    events = pull_all(subscriber, names.SUB_EVENTS)
    assert {e.message.attributes["ce-id"] for e in events} == {queued["task_id"]}


def publish_raw(data: bytes, **attributes) -> None:
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(os.environ["GCS_PROJECT_ID"], names.TOPIC_JOBS)
    publisher.publish(topic, data, **attributes).result()


@pytest.mark.parametrize(
    "data",
    [b"not json", b'{"schema_version": 2, "job_id": "img-' + b"0" * 32 + b'-0", "type": "image"}',
     b'{"schema_version": 1, "job_id": "../../etc/passwd", "type": "image"}', b"{}"],
)
def test_unusable_messages_go_to_the_dead_letter_topic_at_once(api, run_runner, subscriber, data):
    publish_raw(data)
    api.get("/image", query_string=PENGUIN)  # a good job behind the bad message
    runner = run_runner()
    assert runner.jobs_done == 2  # the runner kept serving
    [dead] = pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER)
    assert dead.message.data == data
    assert dead.message.attributes["soul-dead-letter-reason"]
    assert api.get("/image", query_string=PENGUIN).json["status"] == "ready"


def test_a_message_for_a_missing_job_is_dead_lettered(api, run_runner, subscriber):
    job_id = "img-" + "a" * 32 + "-0"
    publish_raw(json.dumps({"schema_version": 1, "job_id": job_id, "type": "image"}).encode(), job_id=job_id)
    run_runner()
    [dead] = pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER)
    assert "no document" in dead.message.attributes["soul-dead-letter-reason"]


def test_an_unrenderable_job_fails_once_and_is_not_retried(api, run_runner, db, subscriber):
    queued = api.get("/image", query_string=PENGUIN).json
    ref = db.collection(names.JOBS).document(queued["task_id"])
    ref.update({"request.width": 100})  # not a multiple of 8: the stored job cannot be rendered
    runner = run_runner()
    assert runner.jobs_done == 1
    job = job_doc(db, queued["task_id"])
    assert job["status"] == "failed" and job["error"]["type"] in ("InvalidJob", "ValueError")
    [event] = pull_all(subscriber, names.SUB_EVENTS)
    assert event.message.attributes["ce-type"] == names.EVENT_JOB_FAILED
    assert json.loads(event.message.data)["error"]["type"] == "InvalidJob"
    # The API cannot show a document that no longer matches the contract, and says so in the error shape.
    task = api.get(f"/tasks/{queued['task_id']}")
    assert task.status_code == 500 and task.json["error"]["code"] == "internal"


class FlakyModels(ModelHost):
    """The real tiny model behind a device that fails the first `failures` loads."""

    def __init__(self, settings, failures: int):
        super().__init__(settings)
        self.failures = failures

    def sdxl(self):
        if self.failures:
            self.failures -= 1
            raise TransientError("device busy")
        return super().sdxl()


def test_a_transient_failure_is_retried_and_then_succeeds(api, run_runner, runner_settings, db):
    queued = api.get("/image", query_string=PENGUIN).json
    run_runner(model_host=FlakyModels(runner_settings, failures=2))
    job = job_doc(db, queued["task_id"])
    assert job["status"] == "succeeded" and job["attempts"] == 3


def test_a_job_failing_every_attempt_is_recorded_failed_and_dead_lettered(api, run_runner, runner_settings, db,
                                                                        subscriber):
    queued = api.get("/image", query_string=PENGUIN).json
    run_runner(model_host=FlakyModels(runner_settings, failures=100))
    job = job_doc(db, queued["task_id"])
    assert job["status"] == "failed" and job["attempts"] == names.MAX_DELIVERY_ATTEMPTS
    assert job["error"]["retryable"] is True
    [dead] = pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER)
    assert dead.message.attributes["job_id"] == queued["task_id"]
    # A failed job does not block the prompt: the next request makes a retry job.
    retry = api.get("/image", query_string=PENGUIN).json
    assert retry["task_id"] == queued["task_id"] + "-r1" and retry["status"] == "queued"


def test_cancel_before_start(api, run_runner, db):
    queued = api.get("/image", query_string=PENGUIN).json
    db.collection(names.JOBS).document(queued["task_id"]).update({"cancel_requested": True})
    run_runner()
    assert job_doc(db, queued["task_id"])["status"] == "canceled"


def test_reconciler_publishes_what_was_never_published_and_requeues_expired_leases(api, run_runner, db, subscriber,
                                                                                  runner_settings):
    queued = api.get("/image", query_string=PENGUIN).json
    pull_all(subscriber, names.SUB_RUNNER)  # the message is lost
    ref = db.collection(names.JOBS).document(queued["task_id"])
    ref.update({"published_at": None, "created_at": utcnow() - timedelta(minutes=5)})
    other = api.get("/image", query_string={**PENGUIN, "cue": "owl"}).json
    pull_all(subscriber, names.SUB_RUNNER)
    db.collection(names.JOBS).document(other["task_id"]).update(
        {"status": "running", "lease_owner": "dead", "lease_expires_at": utcnow() - timedelta(seconds=1)}
    )
    reconciler = Reconciler(
        Db(db), EventPublisher(pubsub_v1.PublisherClient(), os.environ["GCS_PROJECT_ID"]),
        ReconcilePolicy(unpublished_after=timedelta(seconds=30), requeue_queued_after=timedelta(minutes=10)),
    )
    assert sorted(reconciler.run_once()) == sorted([queued["task_id"], other["task_id"]])
    assert reconciler.run_once() == []  # published_at moved: nothing to do until the next deadline
    run_runner()
    assert job_doc(db, queued["task_id"])["status"] == "succeeded"
    assert job_doc(db, other["task_id"])["status"] == "succeeded"


def test_a_runner_restarted_under_its_id_takes_back_what_its_dead_process_held(api, run_runner, runner_settings,
                                                                               db, subscriber):
    """A runner killed mid-render and restarted by its supervisor under the same id within a second left the
    task `running` for the whole lease (and its message's ack deadline) before anyone took it up again."""
    from gpu_runner.adapters.jobstore import JobStore

    queued = api.get("/image", query_string=PENGUIN).json
    assert len(pull_all(subscriber, names.SUB_RUNNER)) == 1  # the dead process had taken the message
    dead = JobStore(Db(db), "runner-restarted", timedelta(minutes=10))  # a lease far from running out
    dead.claim(queued["task_id"], "image")
    assert job_doc(db, queued["task_id"])["status"] == "running"
    other = run_runner(runner_settings.model_copy(update={"runner_id": "runner-elsewhere"}))
    assert other.jobs_done == 0 and job_doc(db, queued["task_id"])["status"] == "running"  # not another id's
    restarted = run_runner(runner_settings.model_copy(update={"runner_id": "runner-restarted"}))
    assert restarted.jobs_done == 1
    task = api.get(f"/tasks/{queued['task_id']}").json
    assert task["status"] == "succeeded" and task["attempts"] == 2, task


def test_a_task_whose_runner_lease_ran_out_says_so_and_claims_no_eta(api, db):
    """It read `denoising, eta 5 s` for the whole minute its dead runner's lease took to run out."""
    from gpu_runner.adapters.jobstore import JobStore

    queued = api.get("/image", query_string=PENGUIN).json
    JobStore(Db(db), "runner-gone", timedelta(minutes=1)).claim(queued["task_id"], "image")
    job = db.collection(names.JOBS).document(queued["task_id"])
    job.update({"stage": "denoising", "progress": 0.4, "eta_seconds": 5.0})
    live = api.get(f"/tasks/{queued['task_id']}").json
    assert (live["stage"], live["eta_seconds"]) == ("denoising", 5.0)
    job.update({"lease_expires_at": utcnow() - timedelta(seconds=1)})
    stalled = api.get(f"/tasks/{queued['task_id']}").json
    assert stalled["status"] == "running" and stalled["stage"] == "waiting_for_runner"
    assert stalled["eta_seconds"] is None and stalled["progress"] == 0.4
