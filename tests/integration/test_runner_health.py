"""`python -m gpu_runner` with SOUL_HEALTH_PORT against the emulators: the health responder says ready once the
runner pulls, and not alive after SIGTERM has stopped it (what the instance group's autohealing relies on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.conftest import REPO
from tests.support import free_port


def probe(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None  # not listening (yet, or any more)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_runner_process_reports_ready_then_stops_being_alive(emulator_stack, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "SOUL_HEALTH_PORT": str(port),
        "SOUL_MODEL_CACHE_DIR": str(tmp_path / "models"),
        "SOUL_PULL_TIMEOUT_SECONDS": "1",
        "SOUL_SHUTDOWN_GRACE_SECONDS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    process = subprocess.Popen([sys.executable, "-m", "gpu_runner"], cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: probe(port, "/readyz") == 200, 120, "the runner to report ready")
        assert probe(port, "/healthz") == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read().decode()[-2000:]
        # The responder dies with the process: the health check sees no answer, i.e. unhealthy.
        assert probe(port, "/healthz") is None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_in_process_runner_is_ready_while_pulling_and_dead_once_stopped(emulator_stack, tmp_path):
    import threading

    from gpu_runner import health
    from gpu_runner.adapters.clients import make_clients
    from gpu_runner.settings import RunnerSettings
    from gpu_runner.worker import Runner

    settings = RunnerSettings(model_cache_dir=tmp_path / "models", pull_timeout_seconds=1.0, shutdown_grace_seconds=1)
    runner = Runner(settings, make_clients(settings))
    server = health.serve_runner(runner, host="127.0.0.1", port=0, clock=time.monotonic,
                                 policy=health.HealthPolicy(stale_after_s=30, startup_grace_s=60))
    try:
        assert probe(server.port, "/healthz") == 200  # starting: alive within the grace
        assert probe(server.port, "/readyz") == 503  # but not pulling yet
        loop = threading.Thread(target=runner.run, daemon=True)
        loop.start()
        wait_for(lambda: probe(server.port, "/readyz") == 200, 60, "ready")
        runner.warm()  # what --warm does: load the tiny SDXL and render once; the phases show on the probe
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
            startup = json.loads(response.read())["startup"]
        assert [p["phase"] for p in startup["phases"]] == ["device", "load", "warmup"]
        assert all(p["seconds"] >= 0 and p["outcome"] == "ok" for p in startup["phases"])
        assert startup["acceleration"]["compile"] == "off" and startup["ready"] is True
        runner.stop()
        loop.join(timeout=30)
        assert not loop.is_alive()
        assert (probe(server.port, "/healthz"), probe(server.port, "/readyz")) == (503, 503)
    finally:
        runner.stop()
        server.close()
