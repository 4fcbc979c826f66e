"""Issue 9, fencing: every runner write to a job is conditional on still holding the lease (owner and the
generation of its claim), and a terminal job never changes again: a progress tick racing the finish, or a runner
whose claim was superseded (even by the same runner id), changes nothing."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from gpu_runner.errors import LeaseLost
from soul_common.firestore import Db
from gpu_runner.adapters.jobstore import JobStore
from gpu_runner.leasing import ClaimDecision
from schemas import names
from schemas._base import utcnow
from schemas.documents import VariantDoc
from schemas.jobs import JobError, JobStatus
from tests.integration.test_runner import PENGUIN, db, job_doc  # noqa: F401 - fixtures
from tests.support import pull_all

LEASE = timedelta(seconds=30)


@pytest.fixture
def queued_job(api, subscriber) -> dict:
    queued = api.get("/image", query_string=PENGUIN).json
    pull_all(subscriber, names.SUB_RUNNER)  # these tests drive the job store directly
    return queued


def a_variant(db, job_id: str) -> VariantDoc:
    spec = job_doc(db, job_id)["request"]
    return VariantDoc(
        variant_id=spec["variant_id"], pk=spec["pk"], soul_id=spec["soul_id"], variant_index=0,
        object=names.image_object(spec["soul_id"], spec["pk"], spec["variant_id"]), width=64, height=64,
        seed=spec["seed"], bytes=1, job_id=job_id, cue=spec["cue"], created_at=utcnow(),
    )


def test_a_progress_tick_racing_the_finish_never_lands_after_it(queued_job, db):
    job_id = queued_job["task_id"]
    store = JobStore(Db(db), "runner-r", LEASE)
    assert store.claim(job_id, "image")[0] is ClaimDecision.CLAIM
    refused = threading.Event()
    ticks = []

    def tick_forever():
        while True:
            try:
                store.progress(job_id, 0.84, "denoising", 1.0)
                ticks.append(1)
                refused.wait(0.02)  # paced like a render's steps, still well inside the finish's round trip
            except LeaseLost:
                refused.set()
                return

    ticker = threading.Thread(target=tick_forever, daemon=True)
    ticker.start()
    while len(ticks) < 3:  # the ticker is writing
        threading.Event().wait(0.01)
    store.finish(job_id, JobStatus.SUCCEEDED)
    assert refused.wait(30), "a progress write after the finish was not refused"
    ticker.join(10)
    done = job_doc(db, job_id)
    assert (done["status"], done["stage"], done["progress"]) == ("succeeded", "succeeded", 1.0)
    with pytest.raises(LeaseLost):
        store.progress(job_id, 0.5, "denoising", None)
    assert job_doc(db, job_id) == done


def test_a_superseded_claim_can_write_nothing_even_under_the_same_runner_id(queued_job, db):
    job_id = queued_job["task_id"]
    stale, fresh = JobStore(Db(db), "runner-r", LEASE), JobStore(Db(db), "runner-r", LEASE)
    stale.claim(job_id, "image")
    db.collection(names.JOBS).document(job_id).update({"lease_expires_at": utcnow() - timedelta(seconds=1)})
    decision, job = fresh.claim(job_id, "image")  # e.g. the same runner restarted, or paused past its lease
    assert decision is ClaimDecision.CLAIM and job.lease_generation == 2
    before = job_doc(db, job_id)

    for write in (lambda: stale.renew(job_id), lambda: stale.progress(job_id, 0.3, "denoising", None),
                  lambda: stale.save_variant(job_id, a_variant(db, job_id)),
                  lambda: stale.finish(job_id, JobStatus.SUCCEEDED)):
        with pytest.raises(LeaseLost):
            write()
    stale.release(job_id, JobError(type="TransientError", message="stale"))  # a no-op for a claim that is not ours any more
    assert job_doc(db, job_id) == before
    assert list(db.collection(names.VARIANTS).stream()) == []

    fresh.progress(job_id, 0.5, "denoising", None)
    fresh.save_variant(job_id, a_variant(db, job_id))
    fresh.finish(job_id, JobStatus.SUCCEEDED)
    assert job_doc(db, job_id)["status"] == "succeeded"
    assert len(list(db.collection(names.VARIANTS).stream())) == 1
