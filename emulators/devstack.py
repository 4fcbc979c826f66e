"""The whole local stack, the way `make run` starts it: the three stand-ins, the `api` function under
functions-framework, and the GPU runner with the offline tiny models. Every process runs in its own process
group; Ctrl-C or SIGTERM (or any child dying) stops them all, emulators included. End-to-end tests start this
very module as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from emulators import _process
from emulators._process import ReadinessCheck
from emulators.stack import EmulatorStack, StackConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DevStackConfig:
    port: int = 8080
    ingest_port: int = 8081  # the `ingest` CloudEvent function, pushed to by the soul-requests subscription
    host: str = "127.0.0.1"
    emulators: StackConfig = StackConfig(state_dir=Path(".soul/emulators"))
    runner_env: tuple[tuple[str, str], ...] = ()  # extra settings for the runner, e.g. short heartbeats in tests


class DevStack:
    def __init__(self, config: DevStackConfig):
        self.config = config
        self.emulators = EmulatorStack(config.emulators)
        self._children: list[tuple[str, subprocess.Popen, Path]] = []

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def ingest_url(self) -> str:
        return f"http://{self.config.host}:{self.config.ingest_port}/"

    def start(self) -> None:
        self.emulators.start()
        self.emulators.provision(push_endpoint=self.ingest_url)
        # Clients outside the stack (the CLI, tests, a shell) find the stand-ins here.
        (self.emulators.state_dir / "env.json").write_text(json.dumps(self.emulators.env(), indent=2))
        env = {**os.environ, **self.emulators.env(), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.setdefault("SOUL_PUBLIC_BASE_URL", self.base_url)
        logs = self.emulators.state_dir / "logs"
        api, api_record = _process.spawn(
            "api",
            [sys.executable, "-m", "functions_framework", "--target", "api", "--source",
             str(REPO / "functions" / "main.py"), "--host", self.config.host, "--port", str(self.config.port)],
            logs / "api.log", marker="functions_framework", env=env,
        )
        self._children.append(("api", api, api_record.log_path))
        ingest, ingest_record = _process.spawn(
            "ingest",
            [sys.executable, "-m", "functions_framework", "--target", "ingest", "--signature-type", "cloudevent",
             "--source", str(REPO / "functions" / "main.py"), "--host", self.config.host,
             "--port", str(self.config.ingest_port)],
            logs / "ingest.log", marker="functions_framework", env=env,
        )
        self._children.append(("ingest", ingest, ingest_record.log_path))
        runner, runner_record = _process.spawn(
            "gpu_runner", [sys.executable, "-m", "gpu_runner", "--warm"], logs / "gpu_runner.log",
            marker="gpu_runner", env={**env, **dict(self.config.runner_env)},
        )
        self._children.append(("gpu_runner", runner, runner_record.log_path))
        _process.wait_until_ready(
            [
                ReadinessCheck(api, api_record, f"{self.base_url}/healthz"),
                # A CloudEvent target answers a plain GET with an error status: any HTTP answer means it is up.
                ReadinessCheck(ingest, ingest_record, self.ingest_url, expect_status=None),
            ],
            timeout_s=60,
        )
        self._wait_for_log(runner, runner_record.log_path, b'"runner_ready"', timeout_s=180)

    @staticmethod
    def _wait_for_log(popen: subprocess.Popen, log_path: Path, marker: bytes, timeout_s: float) -> None:
        """The runner is ready once it says so (its models are loaded): wait for that line, or its death."""
        deadline = time.monotonic() + timeout_s
        while marker not in log_path.read_bytes():
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gpu_runner did not become ready; last lines of {log_path}:\n"
                                   + _process.log_tail(log_path))
            time.sleep(0.2)

    def stop(self) -> None:
        _process.stop_groups([(popen.pid, popen) for _, popen, _ in self._children], grace_s=15.0)
        self._children.clear()
        self.emulators.stop()

    def first_dead_child(self) -> str | None:
        for name, popen, log_path in self._children:
            if popen.poll() is not None:
                return f"{name} exited with code {popen.returncode}; last lines of {log_path}:\n" + _process.log_tail(
                    log_path
                )
        return None


def main(port: int | None = None) -> int:
    api_port = port or int(os.environ.get("PORT", "8080"))
    config = DevStackConfig(port=api_port, ingest_port=int(os.environ.get("INGEST_PORT", api_port + 1)))
    stack = DevStack(config)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stack.start()
        print(_banner(stack), flush=True)
        while not stop.wait(0.5):
            death = stack.first_dead_child()
            if death:
                print(f"error: {death}", file=sys.stderr, flush=True)
                return 1
        return 0
    except Exception as exc:  # noqa: BLE001 - a start-up failure is reported in one line, then all is stopped
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("stopping the stack...", file=sys.stderr, flush=True)
        stack.stop()


def _banner(stack: DevStack) -> str:
    url = stack.base_url
    return f"""
Soul is running (tiny offline models; logs in {stack.emulators.state_dir / 'logs'}).
  api          {url}   (functions-framework, target api)
  ingest       {stack.ingest_url}   (CloudEvent target, pushed by the soul-requests subscription)
  gpu_runner   python -m gpu_runner   (subscribed to soul-jobs)
  emulators    Pub/Sub {stack.emulators.env()['PUBSUB_EMULATOR_HOST']}, Firestore {stack.emulators.env()['FIRESTORE_EMULATOR_HOST']}, GCS {stack.emulators.env()['STORAGE_EMULATOR_HOST']}

Try:
  open {url}/ in a browser (the web page; the API reference is {url}/docs)
  curl "{url}/image?soul_id=nova&cue=penguin&user_id=user123"
  curl "{url}/tasks/<task_id from the answer>"

Ctrl-C stops everything.
""".strip("\n")


if __name__ == "__main__":
    sys.exit(main())
