"""The local stack's rules: restart backoff, the supervisor on real short-lived processes, the autoscaler's
decisions, and the reconciler's decisions beyond re-publishing (bounded attempts, live messages)."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from emulators.autoscaler import AutoscalePolicy, Backlog, decide, parse_range
from emulators.supervisor import RestartPolicy, Supervisor, next_backoff
from schemas.jobs import ImageJobSpec, JobDoc
from soul_common.reconciler import Action, ReconcilePolicy, redelivery_window
from soul_common.reconciler import decide as reconcile

POLICY = RestartPolicy(initial_backoff_s=0.1, max_backoff_s=0.4, reset_after_s=5.0, stop_grace_s=2.0)


def test_backoff_doubles_on_quick_failures_and_resets_after_a_healthy_run():
    assert next_backoff(None, 0.0, POLICY) == 0.1
    assert next_backoff(0.1, 0.5, POLICY) == 0.2
    assert next_backoff(0.4, 0.5, POLICY) == 0.4  # capped
    assert next_backoff(0.4, 6.0, POLICY) == 0.1  # it stayed up: start over


def _tick_until(supervisor: Supervisor, predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        supervisor.tick()
        time.sleep(0.02)


def test_a_dying_process_is_restarted_with_its_log_kept_and_a_retired_one_is_not(tmp_path):
    supervisor = Supervisor(POLICY)
    log = tmp_path / "crash.log"
    supervisor.add("crash", [sys.executable, "-c", "print('up'); raise SystemExit(3)"], log, marker="python")
    supervisor.add("steady", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log",
                   marker="python")
    try:
        _tick_until(supervisor, lambda: supervisor.restarts("crash") >= 2)
        assert log.read_text().count("up") >= 2  # appended, not overwritten
        supervisor.retire("steady")
        assert "steady" not in supervisor.names()
        _tick_until(supervisor, lambda: "steady" not in supervisor.all_names())
    finally:
        supervisor.stop_all(grace_s=2.0)
    assert supervisor.all_names() == []


AUTO = AutoscalePolicy(min_runners=0, max_runners=3, idle_timeout_s=10.0)


@pytest.mark.parametrize(
    ("queued", "busy", "runners", "idle_for", "expected_start", "expected_retire"),
    [
        (0, set(), [], 0, 0, ()),  # nothing to do, nothing running: stays at zero
        (20, set(), [], 0, 3, ()),  # a backlog: up to max at once
        (1, set(), [], 0, 1, ()),
        (2, {"a"}, ["a"], 0, 2, ()),  # demand counts running jobs too
        (0, {"a"}, ["a", "b"], 11, 0, ("b",)),  # b idle past the timeout, a busy
        (0, set(), ["a", "b"], 5, 0, ()),  # idle, but not for long enough
        (3, set(), ["a", "b", "c"], 30, 0, ()),  # idle but a backlog waits: keep them
    ],
)
def test_autoscaler_decisions(queued, busy, runners, idle_for, expected_start, expected_retire):
    now = 100.0
    decision = decide(AUTO, Backlog(queued, frozenset(busy)), runners, {r: now - idle_for for r in runners}, now)
    assert decision.start == expected_start and decision.retire == expected_retire


def test_autoscaler_keeps_the_minimum():
    policy = AutoscalePolicy(min_runners=1, max_runners=2, idle_timeout_s=1.0)
    assert decide(policy, Backlog(0, frozenset()), [], {}, 0.0).start == 1
    assert decide(policy, Backlog(0, frozenset()), ["a"], {"a": -100.0}, 0.0).retire == ()


@pytest.mark.parametrize("text", ["4", "a:b", "3:1", "0:0"])
def test_bad_autoscale_ranges_are_refused(text):
    with pytest.raises(ValueError):
        parse_range(text)


NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
SPEC = ImageJobSpec(
    soul_id="nova", pk="0" * 32, variant_index=0, variant_id="01JABCDEFGHJKMNPQRSTVWXYZ0", cue="penguin",
    prompt="penguin", width=256, height=256, steps=4, guidance=5.0, seed=1, style_fingerprint="f" * 16,
)
WINDOW = redelivery_window()  # of the deployed lanes' delivery policy
RECONCILE = ReconcilePolicy(unpublished_after=timedelta(seconds=30), requeue_queued_after=WINDOW,
                            max_attempts=3, max_republishes=5)


def job(**fields) -> JobDoc:
    base = {"job_id": "img-" + "0" * 32 + "-0", "type": "image", "request": SPEC, "created_at": NOW - timedelta(days=1),
            "updated_at": NOW - timedelta(days=1)}
    return JobDoc(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # Never taken since its publish: waiting in the backlog, presumed lost only after an hour.
        ({"published_at": NOW - timedelta(minutes=59)}, None),
        ({"published_at": NOW - timedelta(minutes=60)}, (Action.PUBLISH, "stuck_queued")),
        # Taken (claimed, released) after its publish: redelivery ends within the window after that touch.
        ({"published_at": NOW - WINDOW - timedelta(seconds=80), "updated_at": NOW - WINDOW + timedelta(seconds=1)},
         None),
        ({"published_at": NOW - WINDOW - timedelta(seconds=80), "updated_at": NOW - WINDOW},
         (Action.PUBLISH, "stuck_queued")),
        # released by a runner a minute ago: its nacked message is still being redelivered
        ({"published_at": NOW - timedelta(hours=1), "attempts": 1, "updated_at": NOW - timedelta(minutes=1)}, None),
        ({"status": "running", "attempts": 2, "lease_expires_at": NOW}, (Action.REQUEUE, "lease_expired")),
        ({"status": "running", "attempts": 3, "lease_expires_at": NOW}, (Action.FAIL, "attempts_exhausted")),
        ({"status": "running", "attempts": 3, "lease_expires_at": NOW + timedelta(seconds=1)}, None),
        ({"published_at": None, "republished": 5}, (Action.FAIL, "republish_exhausted")),
        ({"status": "failed", "attempts": 9}, None),
    ],
)
def test_reconcile_decisions(fields, expected):
    decision = reconcile(job(**fields), NOW, RECONCILE)
    if expected is None:
        assert decision is None
    else:
        assert decision is not None and decision.action is expected[0] and decision.reason.startswith(expected[1])


def test_a_second_make_run_from_one_state_folder_is_refused_while_the_first_runs(tmp_path, monkeypatch):
    """Two stacks in one checkout overwrote each other's stack.json, env.json and runner logs; `python -m
    emulators env` then sent every shell to the later stack. A record left by a dead stack is replaced."""
    import json
    import os
    import signal
    import subprocess

    from emulators.devstack import config_from_env, refuse_a_second_stack

    live = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        record = {"name": "firestore", "pid": live.pid, "pgid": live.pid, "marker": "sleep", "start_ticks": None,
                  "log_path": str(tmp_path / "fs.log")}
        (tmp_path / "stack.json").write_text(json.dumps({
            "project_id": "p", "bucket": "b", "ports": {"firestore": 1}, "processes": [record],
            "env": {"SOUL_API_URL": "http://127.0.0.1:8180"}}))
        with pytest.raises(SystemExit, match="still running .API at http://127.0.0.1:8180.*STACK_DIR="):
            refuse_a_second_stack(tmp_path)
    finally:
        os.killpg(live.pid, signal.SIGTERM)
        live.wait(timeout=5)
    refuse_a_second_stack(tmp_path)  # its stack died: a new start may take the folder
    refuse_a_second_stack(tmp_path / "nothing-here")
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "second"))
    assert config_from_env().emulators.state_dir == tmp_path / "second"
