"""The reconciler against the emulators, with no runner at all: every non-terminal job is brought to an end.

Each test reproduces one way a job could stay unfinished for good (issue 9, "one run did not recover"): a publish
that fails after the job was marked published (the old code then waited 600 s and aborted the whole pass), a job
that loses every runner it is given (re-queued forever), a document that no longer validates (skipped forever),
and a fleet scaled to zero (only runners reconciled). And the rule that keeps the backlog true: no re-publish
while the job's message may still be live."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from google.cloud import firestore, pubsub_v1

from schemas import names
from schemas._base import firestore_dict, utcnow
from schemas.jobs import ImageJobSpec, JobDoc
from soul_common.events import EventPublisher
from soul_common.firestore import Db
from soul_common.reconciler import ReconcilePolicy, Reconciler
from tests.support import pull_all

SPEC = ImageJobSpec(
    soul_id="nova", pk="0" * 32, variant_index=0, variant_id="01JABCDEFGHJKMNPQRSTVWXYZ0", cue="penguin",
    prompt="penguin", width=256, height=256, steps=4, guidance=5.0, seed=1, style_fingerprint="f" * 16,
)
POLICY = ReconcilePolicy(unpublished_after=timedelta(seconds=30), requeue_queued_after=timedelta(seconds=420),
                         max_attempts=3, max_republishes=4)


@pytest.fixture
def db(clean_firestore):
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


@pytest.fixture
def events(emulator_stack, drain_jobs):
    return EventPublisher(pubsub_v1.PublisherClient(), os.environ["GCS_PROJECT_ID"])


def put_job(db, n: int, **fields) -> str:
    now = utcnow() - timedelta(hours=2)
    job_id = f"img-{n:032x}-0"
    doc = JobDoc(**{"job_id": job_id, "type": "image", "request": SPEC, "created_at": now, "updated_at": now,
                    **fields})
    db.collection(names.JOBS).document(job_id).set(firestore_dict(doc))
    return job_id


def doc(db, job_id: str) -> dict:
    return db.collection(names.JOBS).document(job_id).get().to_dict()


def queued_messages(subscriber) -> list[str]:
    return sorted(m.message.attributes["job_id"] for m in pull_all(subscriber, names.SUB_RUNNER))


class FailingOnce:
    """The real publisher, except that publishing the first job message fails (Pub/Sub hiccup, timeout)."""

    def __init__(self, inner: EventPublisher):
        self.inner, self.failed = inner, False

    def republish_job(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise TimeoutError("publish timed out")
        self.inner.republish_job(*args, **kwargs)

    def job_finished(self, job):
        self.inner.job_finished(job)


def test_a_failed_publish_neither_hides_the_job_nor_stops_the_pass(db, events, subscriber):
    first = put_job(db, 1)
    second = put_job(db, 2)
    reconciler = Reconciler(Db(db), FailingOnce(events), POLICY)
    report = reconciler.sweep()
    assert len(report.errors) == 1 and len(report.republished) == 1  # the other job was still handled
    assert doc(db, report.errors[0])["published_at"] is None  # not marked published: retried at once
    assert reconciler.sweep().republished == report.errors
    assert queued_messages(subscriber) == sorted([first, second])


def test_a_job_that_loses_every_runner_ends_failed_after_bounded_attempts(db, events, subscriber):
    job_id = put_job(db, 3, status="running", lease_owner="dead", lease_expires_at=utcnow() - timedelta(seconds=1))
    reconciler = Reconciler(Db(db), events, POLICY)
    for attempt in range(1, POLICY.max_attempts + 1):
        assert reconciler.run_once() == [job_id]
        # A runner claims the re-published job and dies mid-render: its lease expires again.
        db.collection(names.JOBS).document(job_id).update(
            {"status": "running", "lease_owner": f"r{attempt}", "attempts": attempt,
             "lease_expires_at": utcnow() - timedelta(seconds=1)}
        )
    assert reconciler.sweep().failed == [job_id]
    final = doc(db, job_id)
    assert final["status"] == "failed" and final["error"]["type"] == "ReconcilerGaveUp", final
    assert "attempts_exhausted" in final["error"]["message"]
    assert final["event_published_at"] is not None
    events_seen = pull_all(subscriber, names.SUB_EVENTS)
    assert [m.message.attributes["ce-type"] for m in events_seen] == [names.EVENT_JOB_FAILED]


def test_a_job_whose_messages_never_lead_to_a_claim_ends_failed(db, events):
    job_id = put_job(db, 4, published_at=utcnow() - timedelta(hours=1), republished=POLICY.max_republishes)
    assert Reconciler(Db(db), events, POLICY).sweep().failed == [job_id]
    assert "republish_exhausted" in doc(db, job_id)["error"]["message"]


def test_a_job_the_reconciler_fails_gives_back_its_gpu_seconds_reservation(db, events):
    """The reservation its creation made against the tenant's day (soul_common/reservations.py) goes when the
    reconciler ends the job, as it does when a runner finishes one."""
    counter = db.collection(names.TENANTS).document("acme").collection("counters").document("gpu-20261204-3")
    counter.set({"n": 8000 + 3000, "group": "gpu-20261204"})  # this job's 8 s and another's 3 s
    reservation = {"tenant": "acme", "counter": "gpu-20261204-3", "millis": 8000}
    lost = put_job(db, 6, published_at=utcnow() - timedelta(hours=1), republished=POLICY.max_republishes,
                   gpu_reservation=reservation)
    invalid = put_job(db, 7, gpu_reservation={**reservation, "millis": 2000})
    db.collection(names.JOBS).document(invalid).update({"request": {"kind": "image"}})
    counter.update({"n": firestore.Increment(2000)})
    assert sorted(Reconciler(Db(db), events, POLICY).sweep().failed) == sorted([lost, invalid])
    assert counter.get().to_dict()["n"] == 3000


def test_an_invalid_unfinished_document_is_failed_not_skipped_forever(db, events):
    job_id = put_job(db, 5)
    db.collection(names.JOBS).document(job_id).update({"request": {"kind": "image"}})
    assert Reconciler(Db(db), events, POLICY).sweep().failed == [job_id]
    assert doc(db, job_id)["status"] == "failed"


def test_no_republish_while_the_message_may_be_live(db, events, subscriber):
    now = utcnow()
    waiting = put_job(db, 6, published_at=now - timedelta(minutes=30))  # no runner took it yet: in the backlog
    # A runner released it a minute ago: its nacked message is being redelivered.
    touched = put_job(db, 7, published_at=now - timedelta(hours=1), attempts=1, updated_at=now - timedelta(minutes=1))
    # Taken after its publish, and the redelivery window has passed since: the message is gone.
    lost = put_job(db, 8, published_at=now - timedelta(seconds=500), attempts=1, updated_at=now - timedelta(seconds=430))
    # Never taken, but waiting far longer than any backlog should: presumed lost.
    forgotten = put_job(db, 12, published_at=now - timedelta(minutes=61))
    assert sorted(Reconciler(Db(db), events, POLICY).run_once()) == sorted([lost, forgotten])
    assert queued_messages(subscriber) == sorted([lost, forgotten])
    assert doc(db, waiting)["republished"] == 0 and doc(db, touched)["republished"] == 0
    assert doc(db, lost)["republished"] == 1


def test_the_reconcile_function_recovers_jobs_with_no_runner_up(db, events, subscriber, monkeypatch):
    from functions_framework import create_app

    from tests.conftest import REPO

    monkeypatch.setenv("SOUL_RECONCILE_MIN_INTERVAL_SECONDS", "0")  # calls back to back (the deployed: 55 s)
    job_id = put_job(db, 9, status="running", lease_owner="gone", lease_expires_at=utcnow() - timedelta(seconds=5))
    app = create_app(target="reconcile", source=str(REPO / "functions" / "main.py")).test_client()
    answer = app.post("/")
    assert answer.status_code == 200 and answer.json["republished"] == [job_id], answer.json
    assert doc(db, job_id)["status"] == "queued" and doc(db, job_id)["stage"] == "requeued"
    assert queued_messages(subscriber) == [job_id]
    assert app.post("/").json["republished"] == []  # published: nothing more to do


def test_a_finished_job_whose_event_was_never_published_is_announced(db, events, subscriber):
    finished = utcnow() - timedelta(seconds=500)
    job_id = put_job(db, 10, status="succeeded", progress=1.0, stage="succeeded", finished_at=finished)
    recent = put_job(db, 11, status="succeeded", progress=1.0, stage="succeeded", finished_at=utcnow())
    report = Reconciler(Db(db), events, POLICY).sweep()
    assert report.announced == [job_id]
    assert doc(db, job_id)["event_published_at"] is not None and doc(db, recent)["event_published_at"] is None
    [event] = pull_all(subscriber, names.SUB_EVENTS)
    assert event.message.attributes["ce-id"] == job_id
    assert Reconciler(Db(db), events, POLICY).sweep().announced == []


# ---- a reconciler that scales (issue 18): paged scans with a cursor, one pass for the deployment ---------------

PAGED = ReconcilePolicy(unpublished_after=timedelta(seconds=30), requeue_queued_after=timedelta(seconds=420),
                        page_size=3, max_pages=1)


def test_a_whole_pass_finds_every_stale_job_past_the_first_page(db, events, subscriber):
    lost = sorted(put_job(db, n) for n in range(1, 11))  # never published, two hours old: 10 > one page of 3
    report = Reconciler(Db(db), events, PAGED).sweep()
    assert sorted(report.republished) == lost
    assert report.scanned >= 10 and report.pages >= 4  # 4 pages of queued jobs at least
    assert queued_messages(subscriber) == lost


def test_leased_passes_go_on_from_their_cursor_and_only_one_holder_runs_a_period(db, events, subscriber):
    from soul_common.reconciler import PassLease

    lost = sorted(put_job(db, n) for n in range(1, 11))
    gateway = Db(db)
    reconciler = Reconciler(gateway, events, PAGED)
    held = PassLease(gateway, "runner-a", timedelta(0))  # (an interval of 0: passes back to back)
    other = PassLease(gateway, "runner-b", timedelta(minutes=5))
    first = reconciler.run_leased(held)
    assert first is not None and len(first.republished) == 3  # one page of queued jobs in this pass
    assert reconciler.run_leased(other) is None  # a pass ended less than runner-b's interval ago: none now
    found = set(first.republished)
    for _ in range(3):  # the holder's next passes go on from the cursor kept in the lease: 3 + 3 + 3 + 1
        found |= set(reconciler.run_leased(held).republished)
    assert sorted(found) == lost
    cursors = db.collection(names.LEASES).document("reconciler").get().to_dict()["cursors"]
    assert cursors["queued"] is None  # reached the end: the next pass starts again from the first job
    # while a pass runs nobody else starts one; a holder that died is replaced once its hold expired
    quick = PassLease(gateway, "runner-c", timedelta(0))
    assert PassLease(gateway, "runner-a", timedelta(0), hold=timedelta(minutes=5)).take() is not None
    assert quick.take() is None
    assert PassLease(gateway, "runner-a", timedelta(0), hold=timedelta(0)).take() is not None  # dies at once
    assert quick.take() is not None
    assert queued_messages(subscriber) == lost
