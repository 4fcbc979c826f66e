"""`make run` as an operator meets it: the stack survives its runner (SIGKILL: restarted with backoff, logged, the
API never goes down, the next job is served), and `python -m emulators env` finds the running stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e


def _children(parent: int, marker: str) -> list[int]:
    """Pids whose parent is `parent` and whose command line names `marker` (never anyone else's processes)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and marker in cmdline:
            found.append(int(proc.name))
    return found


def test_emulators_env_finds_the_stack_started_by_make_run(stack):
    answer = subprocess.run(
        [sys.executable, "-m", "emulators", "env", "--state-dir", str(stack["workdir"] / ".soul" / "emulators")],
        capture_output=True, text=True, timeout=60,
    )
    assert answer.returncode == 0, answer.stderr
    assert f"export PUBSUB_EMULATOR_HOST={stack['env']['PUBSUB_EMULATOR_HOST']}" in answer.stdout
    assert f"export SOUL_API_URL={stack['base']}" in answer.stdout


def test_the_reconcile_function_runs_and_is_called_like_cloud_scheduler(stack):
    answer = requests.post(stack["reconcile"], timeout=30)
    assert answer.status_code == 200, answer.text
    # "skipped": the stack's own scheduled call (or a runner) holds this period's pass: a success for the scheduler
    assert answer.json()["status"] in ("ok", "skipped"), answer.json()
    if answer.json()["status"] == "ok":
        assert set(answer.json()) >= {"republished", "failed", "errors"}
    time.sleep(3)  # the e2e stack calls it every 2 s
    assert '"reconcile_call_failed"' not in (stack["workdir"] / "devstack.log").read_text()


def test_the_soul_cli_finds_the_stack_from_its_directory(stack):
    """No SOUL_API_URL, no PUBSUB_EMULATOR_HOST: `soul` reads the running stack's record in .soul/emulators."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOUL_API_URL", "PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")}
    soul = [sys.executable, "-m", "soul_cli"]
    tasks = subprocess.run([*soul, "tasks", "--json"], cwd=stack["workdir"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert tasks.returncode == 0, tasks.stderr
    letters = subprocess.run([*soul, "dead-letters", "list", "--json"], cwd=stack["workdir"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert letters.returncode == 0, letters.stderr


def test_a_killed_runner_is_restarted_and_the_api_stays_up(stack):
    base, devstack = stack["base"], stack["process"]
    [runner] = _children(devstack.pid, "gpu_runner")
    os.killpg(runner, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200  # the API never went down
        restarted = [pid for pid in _children(devstack.pid, "gpu_runner") if pid != runner]
        if restarted:
            break
        assert time.monotonic() < deadline, "the runner was not restarted"
        time.sleep(0.2)
    assert devstack.poll() is None
    log = (stack["workdir"] / "devstack.log").read_text()
    assert '"process_exited"' in log and '"process_restarted"' in log and '"exit_code": -9' in log
    # The restarted runner serves the next job.
    answer = requests.get(f"{base}/image?soul_id=mira&cue=zeppelin&user_id=survivor", timeout=10)
    assert answer.status_code == 202, answer.text  # a cue no other test of this stack asks for
    queued = answer.json()
    deadline = time.monotonic() + 180
    while (task := requests.get(f"{base}/tasks/{queued['task_id']}", timeout=10).json())["status"] != "succeeded":
        assert task["status"] in ("queued", "running") and time.monotonic() < deadline, task
        time.sleep(0.2)
