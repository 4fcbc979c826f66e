"""The local autoscaler end to end (issue 10): no runner while nothing waits; a backlog of 20 jobs starts runners
(at least 2); they drain it; after the idle timeout they are stopped with SIGTERM, back to zero. No job is lost,
none runs twice (one claim, one object, one variant each)."""

from __future__ import annotations

import os
import time

import pytest
from google.cloud import firestore

from emulators.autoscaler import AutoscalePolicy, LocalAutoscaler, firestore_backlog
from schemas import names
from tests.fleet import Fleet, jobs, objects_per_variant, pid_alive

pytestmark = pytest.mark.e2e

CUES = ("penguin", "owl", "storm", "rain", "lighthouse", "harbor", "forest", "desert", "comet", "lantern",
        "garden", "bridge", "castle", "river", "meadow", "glacier", "market", "library", "train", "violin")


def test_backlog_scales_runners_up_from_zero_and_idle_scales_them_back_to_zero(api, tmp_path_factory):
    db = firestore.Client(project=os.environ["GCS_PROJECT_ID"])
    fleet = Fleet(tmp_path_factory.mktemp("autoscale"), tmp_path_factory.getbasetemp() / "models")
    scaler = LocalAutoscaler(AutoscalePolicy(min_runners=0, max_runners=2, idle_timeout_s=5.0), fleet.supervisor,
                             firestore_backlog(db), fleet.start_runner)
    seen_pids: set[int] = set()
    try:
        assert scaler.tick().start == 0 and scaler.runners() == []  # nothing waits: nothing runs
        task_ids = [api.get("/image", query_string={"soul_id": "nova", "cue": cue, "user_id": "u"}).json["task_id"]
                    for cue in CUES]
        deadline = time.monotonic() + 300
        while True:
            fleet.supervisor.tick()
            scaler.tick()
            seen_pids.update(pid for name in scaler.runners() if (pid := fleet.pid(name)))
            states = jobs(db)
            drained = all(states[t]["status"] in ("succeeded", "failed", "canceled") for t in task_ids)
            if drained and not fleet.supervisor.all_names():
                break
            assert time.monotonic() < deadline, (scaler.runners(), [states[t]["status"] for t in task_ids])
            time.sleep(0.2)
    finally:
        fleet.stop()
    assert scaler.peak >= 2, scaler.peak
    final = jobs(db)
    assert {final[t]["status"] for t in task_ids} == {"succeeded"}
    assert all(final[t]["attempts"] == 1 for t in task_ids), {t: final[t]["attempts"] for t in task_ids}
    variants = [final[t]["request"]["variant_id"] for t in task_ids]
    per_variant = objects_per_variant()
    assert all(per_variant[v] == 1 for v in variants) and len(per_variant) == len(task_ids)
    assert len(list(db.collection(names.VARIANTS).stream())) == len(task_ids)
    # Scaled in by SIGTERM after the idle timeout: each runner drained and exited cleanly, none was killed.
    assert fleet.supervisor.retired and all(code == 0 for _, code in fleet.supervisor.retired), fleet.supervisor.retired
    assert not [pid for pid in seen_pids if pid_alive(pid)], "a runner outlived its retirement"
