"""Faults on purpose, with the runner as a real process: killed mid-job (SIGKILL, nothing cleaned up) and
stopped gracefully (SIGTERM). The job document, the lease and the reconciler must recover the work without
losing or duplicating anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage

from schemas import names
from schemas._base import utcnow
from tests.support import pull_all

pytestmark = pytest.mark.fault


@pytest.fixture
def spawn_runner(emulator_stack, tmp_path_factory, api):
    started: list[subprocess.Popen] = []
    logs = tmp_path_factory.mktemp("runner-logs")

    def spawn(name: str, **extra_env: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "SOUL_MODEL_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "models"),
            "SOUL_LEASE_SECONDS": "5",
            "SOUL_HEARTBEAT_SECONDS": "0.5",
            "SOUL_RECONCILE_INTERVAL_SECONDS": "1",
            "SOUL_TINY_MAX_STEPS": "40",
            "SOUL_PROGRESS_INTERVAL_SECONDS": "0.1",
            "SOUL_PULL_TIMEOUT_SECONDS": "1",
            "SOUL_RUNNER_ID": name,
            **extra_env,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "gpu_runner", "--warm"], env=env, start_new_session=True,
            stdout=open(logs / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
        )
        started.append(process)
        return process

    spawn.logs = logs
    yield spawn
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def job(job_id: str) -> dict:
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    return db.collection(names.JOBS).document(job_id).get().to_dict()


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_runner_killed_mid_job_loses_nothing_and_duplicates_nothing(api, spawn_runner):
    first = spawn_runner("runner-a")
    queued = api.get("/image", query_string={"soul_id": "nova", "cue": "storm", "user_id": "u"}).json
    task_id = queued["task_id"]
    wait_for(lambda: job(task_id)["stage"] == "denoising", 120, "the job to be denoising")
    os.killpg(first.pid, signal.SIGKILL)  # no cleanup at all: the lease is left to expire
    first.wait(timeout=30)
    assert job(task_id)["status"] == "running" and job(task_id)["lease_owner"] == "runner-a"

    second = spawn_runner("runner-b")
    done = wait_for(lambda: (j := job(task_id))["status"] in ("succeeded", "failed") and j, 120, "recovery")
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    bucket = storage.Client(project=os.environ["GCS_PROJECT_ID"], credentials=AnonymousCredentials()).bucket(
        os.environ["GCS_BUCKET_NAME"]
    )
    assert len(list(bucket.list_blobs(prefix=f"images/nova/{queued['pk_id']}/"))) == 1
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    assert len(list(db.collection(names.VARIANTS).stream())) == 1
    assert api.get("/image", query_string={"soul_id": "nova", "cue": "storm", "user_id": "u"}).status_code == 200

    os.killpg(second.pid, signal.SIGTERM)
    assert second.wait(timeout=60) == 0


def test_sigterm_lets_the_running_job_finish_then_exits(api, spawn_runner):
    runner = spawn_runner("runner-c")
    task_id = api.get("/image", query_string={"soul_id": "mira", "cue": "rain", "user_id": "u"}).json["task_id"]
    wait_for(lambda: job(task_id)["stage"] == "denoising", 120, "the job to be denoising")
    os.killpg(runner.pid, signal.SIGTERM)
    assert runner.wait(timeout=60) == 0
    finished = job(task_id)
    assert finished["status"] == "succeeded" and finished["attempts"] == 1


def test_a_failpoint_kills_the_runner_after_its_upload_and_another_completes_the_job_once(api, spawn_runner,
                                                                                         subscriber):
    first = spawn_runner("runner-fp", SOUL_FAILPOINTS="after_upload:1", SOUL_FAILPOINT_SEED="1")
    queued = api.get("/image", query_string={"soul_id": "nova", "cue": "hail", "user_id": "u"}).json
    task_id = queued["task_id"]
    assert first.wait(timeout=120) == -signal.SIGKILL
    log_text = (spawn_runner.logs / "runner-fp.log").read_text()
    assert '"failpoint_fired"' in log_text and '"after_upload"' in log_text
    bucket = storage.Client(project=os.environ["GCS_PROJECT_ID"], credentials=AnonymousCredentials()).bucket(
        os.environ["GCS_BUCKET_NAME"]
    )
    prefix = f"images/nova/{queued['pk_id']}/"
    assert len(list(bucket.list_blobs(prefix=prefix))) == 1  # the object is there, the variant is not
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    assert list(db.collection(names.VARIANTS).stream()) == []

    second = spawn_runner("runner-fp-2")
    done = wait_for(lambda: (j := job(task_id))["status"] in ("succeeded", "failed") and j, 120, "recovery")
    assert done["status"] == "succeeded" and done["attempts"] == 2 and done["progress"] == 1.0, done
    assert len(list(bucket.list_blobs(prefix=prefix))) == 1
    assert len(list(db.collection(names.VARIANTS).stream())) == 1
    events = wait_for(lambda: pull_all(subscriber, names.SUB_EVENTS), 30, "the completion event")
    assert [e.message.attributes["ce-id"] for e in events] == [task_id]
    os.killpg(second.pid, signal.SIGTERM)
    assert second.wait(timeout=60) == 0


def test_a_runner_frozen_past_its_lease_changes_nothing_when_it_wakes(api, spawn_runner, subscriber):
    # A slow heartbeat: when the frozen runner wakes, its render's next progress tick comes before its heartbeat
    # notices the lost lease, so the tick itself must be refused.
    frozen = spawn_runner("runner-frozen", SOUL_HEARTBEAT_SECONDS="25", SOUL_LEASE_SECONDS="60")
    queued = api.get("/image", query_string={"soul_id": "nova", "cue": "fog", "user_id": "u"}).json
    task_id = queued["task_id"]
    wait_for(lambda: job(task_id)["stage"] == "denoising", 120, "the job to be denoising")
    os.killpg(frozen.pid, signal.SIGSTOP)
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    # Frozen past its lease (shortened here rather than waited out).
    db.collection(names.JOBS).document(task_id).update({"lease_expires_at": utcnow() - timedelta(seconds=1)})
    awake = spawn_runner("runner-awake")
    done = wait_for(lambda: (j := job(task_id))["status"] == "succeeded" and j.get("event_published_at") and j,
                    120, "the other runner to finish the job")
    assert done["lease_owner"] is None and done["attempts"] == 2

    os.killpg(frozen.pid, signal.SIGCONT)
    log_file = spawn_runner.logs / "runner-frozen.log"
    wait_for(lambda: "LeaseLost" in log_file.read_text(), 60, "the woken runner to find its lease lost")
    after = job(task_id)
    assert after == done, "the woken runner changed the finished job"
    assert (after["status"], after["stage"], after["progress"]) == ("succeeded", "succeeded", 1.0)
    bucket = storage.Client(project=os.environ["GCS_PROJECT_ID"], credentials=AnonymousCredentials()).bucket(
        os.environ["GCS_BUCKET_NAME"]
    )
    assert len(list(bucket.list_blobs(prefix=f"images/nova/{queued['pk_id']}/"))) == 1
    assert len(list(db.collection(names.VARIANTS).stream())) == 1
    events = pull_all(subscriber, names.SUB_EVENTS, rounds=3)
    assert [e.message.attributes["ce-id"] for e in events] == [task_id]
    for process in (frozen, awake):
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0
