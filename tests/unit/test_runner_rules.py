"""The runner's pure rules: claiming, reconciling, the error policy table, progress throttling and cancellation."""

from datetime import datetime, timedelta, timezone

import pytest
from google.api_core import exceptions as gexc

from gpu_runner.errors import (
    Disposition,
    InvalidRenderSpec,
    InvalidJob,
    InvalidMessage,
    JobCanceled,
    JobNotFound,
    LeaseLost,
    TransientError,
    disposition,
)
from gpu_runner.leasing import ClaimDecision, decide_claim
from gpu_runner.stages.progress import JobSignals, ProgressReporter
from soul_common.reconciler import ReconcilePolicy, needs_publish
from schemas.jobs import ImageJobSpec, JobDoc, JobStatus, can_transition

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
SPEC = ImageJobSpec(
    soul_id="nova", pk="0" * 32, variant_index=0, variant_id="01JABCDEFGHJKMNPQRSTVWXYZ0", cue="penguin",
    prompt="penguin", width=256, height=256, steps=4, guidance=5.0, seed=1, style_fingerprint="f" * 16,
)


def job(**fields) -> JobDoc:
    base = {"job_id": "img-" + "0" * 32 + "-0", "type": "image", "request": SPEC, "created_at": NOW,
            "updated_at": NOW}
    return JobDoc(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, ClaimDecision.CLAIM),
        ({"status": "succeeded"}, ClaimDecision.ALREADY_FINISHED),
        ({"status": "failed"}, ClaimDecision.ALREADY_FINISHED),
        ({"status": "canceled"}, ClaimDecision.ALREADY_FINISHED),
        ({"status": "running", "lease_owner": "other", "lease_expires_at": NOW + timedelta(seconds=5)},
         ClaimDecision.HELD_ELSEWHERE),
        ({"status": "running", "lease_owner": "other", "lease_expires_at": NOW - timedelta(seconds=1)},
         ClaimDecision.CLAIM),
        ({"status": "running", "lease_owner": "me", "lease_expires_at": NOW + timedelta(seconds=5)},
         ClaimDecision.CLAIM),
    ],
)
def test_claim_decisions(fields, expected):
    assert decide_claim(job(**fields), "me", NOW) is expected


POLICY = ReconcilePolicy(unpublished_after=timedelta(seconds=30), requeue_queued_after=timedelta(minutes=10))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"created_at": NOW - timedelta(seconds=5)}, None),
        ({"created_at": NOW - timedelta(seconds=31)}, "never_published"),
        ({"published_at": NOW - timedelta(minutes=1)}, None),
        ({"published_at": NOW - timedelta(minutes=11), "updated_at": NOW - timedelta(minutes=10)}, "stuck_queued"),
        ({"status": "running", "lease_expires_at": NOW + timedelta(seconds=1)}, None),
        ({"status": "running", "lease_expires_at": NOW - timedelta(seconds=1)}, "lease_expired"),
        ({"status": "succeeded", "created_at": NOW - timedelta(days=1)}, None),
    ],
)
def test_reconcile_reasons(fields, expected):
    assert needs_publish(job(**fields), NOW, POLICY) == expected


def _validation_error():
    from pydantic import BaseModel, ValidationError

    class Model(BaseModel):
        n: int

    try:
        Model(n="x")
    except ValidationError as exc:
        return exc
    raise AssertionError("no error")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (InvalidMessage("x"), Disposition.DEAD_LETTER),
        (JobNotFound("x"), Disposition.DEAD_LETTER),
        (InvalidJob("x"), Disposition.FAIL),
        (InvalidRenderSpec("width must be a multiple of 8"), Disposition.FAIL),  # the job's own input
        (ValueError("a library's or our own bug"), Disposition.RETRY),  # retried, then dead-lettered
        (_validation_error(), Disposition.RETRY),
        (TypeError("unexpected keyword"), Disposition.RETRY),
        (JobCanceled("x"), Disposition.ACK),
        (LeaseLost("x"), Disposition.ACK),
        (TransientError("x"), Disposition.RETRY),
        (gexc.ServiceUnavailable("x"), Disposition.RETRY),
        (gexc.DeadlineExceeded("x"), Disposition.RETRY),
        (RuntimeError("CUDA out of memory"), Disposition.RETRY),
    ],
)
def test_error_policy(exc, expected):
    assert disposition(exc) is expected


def test_transitions():
    assert can_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    assert can_transition("running", "succeeded")
    assert not can_transition("succeeded", "running")
    assert not can_transition("canceled", "queued")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_is_throttled_to_the_interval():
    writes, clock, signals = [], FakeClock(), JobSignals()
    reporter = ProgressReporter(lambda f, s, e: writes.append((round(f, 3), s, e)), signals, 1.0, clock)
    for step in range(1, 11):
        clock.now += 0.25
        reporter.step(step, 10, stage="denoising")
    assert len(writes) == 3  # at t=0.25, 1.25, 2.25
    assert [w[0] for w in writes] == sorted(w[0] for w in writes)
    reporter.stage("uploading", 0.95)
    assert writes[-1][1] == "uploading"
    assert writes[-1][2] is not None and writes[-1][2] > 0


def test_cancel_and_lost_lease_stop_at_the_next_step():
    signals = JobSignals()
    reporter = ProgressReporter(lambda *a: None, signals, 0.0)
    reporter.step(1, 4, stage="denoising")
    signals.cancel.set()
    with pytest.raises(JobCanceled):
        reporter.step(2, 4, stage="denoising")
    lost = JobSignals()
    lost.lease_lost.set()
    with pytest.raises(LeaseLost):
        ProgressReporter(lambda *a: None, lost, 0.0).step(1, 4, stage="denoising")
    stopping = JobSignals()
    stopping.shutdown.set()
    with pytest.raises(TransientError):
        ProgressReporter(lambda *a: None, stopping, 0.0).stage("uploading", 0.9)


def test_background_progress_writes_off_the_render_thread_and_stops_at_close():
    import threading

    from gpu_runner.errors import LeaseLost as Lost

    signals, writes, release, writing = JobSignals(), [], threading.Event(), threading.Event()

    def slow_write(fraction, stage, eta):
        writing.set()
        release.wait(5)  # a slow Firestore round trip
        writes.append((fraction, threading.current_thread().name))

    reporter = ProgressReporter(slow_write, signals, 0.0, background=True)
    reporter.step(1, 4, stage="denoising")  # returns at once: the write waits in its own thread
    reporter.step(2, 4, stage="denoising")
    assert writing.wait(5) and not writes
    release.set()
    reporter.close()
    assert writes and all(name == "progress" for _, name in writes)
    count = len(writes)
    reporter.stage("uploading", 0.9)
    assert len(writes) == count  # closed: nothing more is written

    def refused(*_):
        raise Lost("taken")

    lost = JobSignals()
    ProgressReporter(refused, lost, 0.0, background=True).step(1, 4, stage="denoising")
    assert lost.lease_lost.wait(5)
