"""The whole local stack, the way `make run` starts it: the three stand-ins, the `api`, `ingest` and `reconcile`
functions under functions-framework, and GPU runners with the offline tiny models. Every process runs in its own
process group under a `Supervisor`: one that dies is restarted with backoff and logged, the API stays up (systemd
does this for the runner on a VM). `RUNNERS=N` starts N runners on the same subscription; `AUTOSCALE=MIN:MAX`
lets the local autoscaler size them on the backlog instead. The `reconcile` function is called every
`RECONCILE_INTERVAL_S` seconds, as Cloud Scheduler does. The stack is recorded in `<state_dir>/stack.json`, so
`python -m emulators env` (and the `soul` CLI) find it. Ctrl-C or SIGTERM stops everything, emulators included.
End-to-end tests start this very module as a process."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from emulators import _process, detached
from emulators._process import ReadinessCheck
from emulators.autoscaler import AutoscalePolicy, LocalAutoscaler, firestore_backlog, parse_range
from emulators.errors import EmulatorError
from emulators.stack import EmulatorStack, StackConfig
from emulators.supervisor import RestartPolicy, Supervisor

log = structlog.get_logger(__name__)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DevStackConfig:
    port: int = 8080
    ingest_port: int = 8081  # the `ingest` CloudEvent function, pushed to by the soul-requests subscription
    webhooks_port: int = 8082  # the `webhooks` CloudEvent function, pushed to by soul-events-webhooks
    host: str = "127.0.0.1"
    emulators: StackConfig = StackConfig(state_dir=Path(".soul/emulators"))
    reconcile_port: int = 8083  # the `reconcile` function, called every reconcile_interval_s like Cloud Scheduler
    runner_env: tuple[tuple[str, str], ...] = ()  # extra settings for the runner, e.g. short heartbeats in tests
    runners: int = 1  # fixed runners on the same subscription (ignored when autoscale is set)
    autoscale: AutoscalePolicy | None = None
    reconcile_interval_s: float = 15.0
    restart: RestartPolicy = RestartPolicy()


class DevStack:
    def __init__(self, config: DevStackConfig):
        self.config = config
        self.emulators = EmulatorStack(config.emulators)
        self.supervisor = Supervisor(config.restart)
        self.autoscaler: LocalAutoscaler | None = None
        self._runner_env: dict[str, str] = {}
        self._last_reconcile = 0.0

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def ingest_url(self) -> str:
        return f"http://{self.config.host}:{self.config.ingest_port}/"

    @property
    def reconcile_url(self) -> str:
        return f"http://{self.config.host}:{self.config.reconcile_port}/"

    @property
    def webhooks_url(self) -> str:
        return f"http://{self.config.host}:{self.config.webhooks_port}/"

    def start(self) -> None:
        refuse_a_second_stack(self.emulators.state_dir)
        self.emulators.start()
        self.emulators.provision(push_endpoint=self.ingest_url, webhooks_endpoint=self.webhooks_url)
        # Clients outside the stack (the CLI, tests, a shell) find the stand-ins here and in stack.json.
        (self.emulators.state_dir / "env.json").write_text(json.dumps(self.emulators.env(), indent=2))
        detached.record(self.emulators, extra_env={"SOUL_API_URL": self.base_url})
        env = {**os.environ, **self.emulators.env(), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               # the `reconcile` function is called every reconcile_interval_s here, not every minute
               "SOUL_RECONCILE_MIN_INTERVAL_SECONDS": str(self.config.reconcile_interval_s)}
        env.setdefault("SOUL_PUBLIC_BASE_URL", self.base_url)
        env.setdefault("SOUL_WEBHOOK_ALLOW_LOOPBACK", "true")  # local mode: webhooks may go to this machine
        env.setdefault("SOUL_WEBHOOK_SECRET", _local_webhook_secret(self.emulators.state_dir))
        # Webhooks to loopback only on the ports test receivers declare; never one of the stack's own functions
        # (a POST to ingest would be a forged Pub/Sub push). The emulators' ports are refused by the settings.
        from functions.settings import parse_ports

        own = {self.config.port, self.config.ingest_port, self.config.webhooks_port, self.config.reconcile_port}
        clash = sorted(parse_ports(env.get("SOUL_WEBHOOK_LOOPBACK_PORTS", "")) & own)
        if clash:
            raise SystemExit(f"SOUL_WEBHOOK_LOOPBACK_PORTS names port {clash[0]}, where a function of this stack "
                             "listens; declare only your test receivers' ports")
        checks = []
        # The api as deployed: `api_async`, functions-framework's ASGI mode (streams hold no thread).
        for target, port, extra in (("api_async", self.config.port, []),
                                    ("ingest", self.config.ingest_port, ["--signature-type", "cloudevent"]),
                                    ("webhooks", self.config.webhooks_port, ["--signature-type", "cloudevent"]),
                                    ("reconcile", self.config.reconcile_port, [])):
            popen, record = self.supervisor.add(
                target,
                [sys.executable, "-m", "functions_framework", "--target", target, *extra, "--source",
                 str(REPO / "functions" / "main.py"), "--host", self.config.host, "--port", str(port)],
                self._log(target), marker="functions_framework", env=env,
            )
            url = f"http://{self.config.host}:{port}" + ("/healthz" if target == "api_async" else "/")
            # A CloudEvent target answers a plain GET with an error status: any HTTP answer means it is up.
            checks.append(ReadinessCheck(popen, record, url, expect_status=200 if target == "api_async" else None))
        _process.wait_until_ready(checks, timeout_s=60)
        self._runner_env = {**env, **dict(self.config.runner_env)}
        if self.config.autoscale is not None:
            from google.cloud import firestore

            # The autoscaler reads job documents from this process: point its client at the emulator.
            os.environ["FIRESTORE_EMULATOR_HOST"] = self.emulators.env()["FIRESTORE_EMULATOR_HOST"]
            db = firestore.Client(project=self.config.emulators.project_id)
            self.autoscaler = LocalAutoscaler(self.config.autoscale, self.supervisor, firestore_backlog(db),
                                              self.add_runner)
            self.autoscaler.tick()
        else:
            for index in range(1, self.config.runners + 1):
                self.add_runner(f"runner-{index}")
            first = self.supervisor.popen("runner-1")
            if first is not None:
                self._wait_for_log(first, self._log("runner-1"), b'"runner_ready"', timeout_s=180)

    def _log(self, name: str) -> Path:
        return self.emulators.state_dir / "logs" / f"{name}.log"

    def add_runner(self, name: str) -> None:
        """One more runner process on the same subscription, supervised (restarted if it dies, on the same health
        port: `GET /healthz`, `/readyz` with its start-up phases, as the instance group's health check sees it)."""
        env = {**self._runner_env, "SOUL_RUNNER_ID": name}
        if "SOUL_HEALTH_PORT" not in env:
            env["SOUL_HEALTH_PORT"] = str(_process.free_ports(self.config.host, 1)[0])
        log.info("runner_health_port", runner=name, url=f"http://{self.config.host}:{env['SOUL_HEALTH_PORT']}/healthz")
        self.supervisor.add(name, [sys.executable, "-m", "gpu_runner", "--warm"], self._log(name),
                            marker="gpu_runner", env=env)

    def tick(self) -> None:
        """One turn of the main loop: restarts, scaling, and the scheduled reconcile call when due."""
        self.supervisor.tick()
        if self.autoscaler is not None:
            try:
                self.autoscaler.tick()
            except Exception as exc:  # noqa: BLE001 - Firestore busy: decide again next tick
                log.warning("autoscale_failed", error=repr(exc))
        if time.monotonic() - self._last_reconcile >= self.config.reconcile_interval_s:
            self._last_reconcile = time.monotonic()
            threading.Thread(target=self._call_reconcile, name="scheduler", daemon=True).start()

    def _call_reconcile(self) -> None:
        try:
            status = _process.http_request("POST", self.reconcile_url,
                                           timeout_s=max(self.config.reconcile_interval_s, 5))
        except EmulatorError as exc:  # the function is down (being restarted): the next call tries again
            log.warning("reconcile_call_failed", error=str(exc))
            return
        if status not in (200, 409):
            log.warning("reconcile_call_failed", status=status)

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
        try:
            self.supervisor.stop_all(grace_s=15.0)
        finally:
            detached.state_file(self.emulators.state_dir).unlink(missing_ok=True)
            self.emulators.stop()


def refuse_a_second_stack(state_dir: Path) -> None:
    """One `make run` per state folder: a second one would overwrite the first's stack.json, env.json and logs
    (`python -m emulators env` would then point every shell at the wrong stack). Refused, naming the one running;
    `STACK_DIR` gives another stack a folder of its own."""
    running = detached.load(state_dir)
    if running is None or not any(running.running().values()):
        return  # nothing recorded, or a record left by a stack that died: this start replaces it
    api = running.env.get("SOUL_API_URL", "another port")
    raise SystemExit(f"a stack started from {state_dir} is still running (API at {api}); stop it first (Ctrl-C in "
                     f"its shell), or give this one its own folder: STACK_DIR=.soul/stack-{os.getpid()} make run")


def config_from_env(port: int | None = None) -> DevStackConfig:
    """The `make run` knobs: PORT, INGEST_PORT, WEBHOOKS_PORT, RECONCILE_PORT, RUNNERS, AUTOSCALE=MIN:MAX, AUTOSCALE_IDLE_S,
    RECONCILE_INTERVAL_S, STACK_DIR (the state folder: logs, stack.json, env.json)."""
    api_port = port or int(os.environ.get("PORT", "8080"))
    autoscale = None
    if os.environ.get("AUTOSCALE"):
        autoscale = parse_range(os.environ["AUTOSCALE"])
        idle = float(os.environ.get("AUTOSCALE_IDLE_S", autoscale.idle_timeout_s))
        autoscale = AutoscalePolicy(autoscale.min_runners, autoscale.max_runners, idle_timeout_s=idle)
    runners = int(os.environ.get("RUNNERS") or 1)
    if runners < 0:
        raise ValueError(f"RUNNERS must be 0 or more, got {runners}")
    return DevStackConfig(
        port=api_port,
        ingest_port=int(os.environ.get("INGEST_PORT", api_port + 1)),
        webhooks_port=int(os.environ.get("WEBHOOKS_PORT", api_port + 2)),
        reconcile_port=int(os.environ.get("RECONCILE_PORT", api_port + 3)),
        runners=runners,
        autoscale=autoscale,
        reconcile_interval_s=float(os.environ.get("RECONCILE_INTERVAL_S", 15.0)),
        emulators=StackConfig(state_dir=Path(os.environ.get("STACK_DIR") or ".soul/emulators")),
    )


def _local_webhook_secret(state_dir: Path) -> str:
    """The local stack's webhook signing secret: made once per state folder, kept beside the emulators' state."""
    path = state_dir / "webhook_secret"
    if not path.exists():
        path.write_text("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def main(port: int | None = None) -> int:
    from soul_common.logs import configure_logging

    configure_logging(os.environ.get("LOG_LEVEL", "INFO"), component="devstack")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stack = DevStack(config_from_env(port))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        stack.start()
        print(_banner(stack), flush=True)
        while not stop.wait(0.5):
            stack.tick()
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
  web page     {url}/   (open it in a browser)
  api          {url}   (functions-framework, target api_async: ASGI)
  ingest       {stack.ingest_url}   (CloudEvent target, pushed by the soul-requests subscription)
  reconcile    {stack.reconcile_url}   (called every {stack.config.reconcile_interval_s:g} s, like Cloud Scheduler)
  gpu_runner   {_runners(stack)}   (python -m gpu_runner on soul-jobs, restarted if they die)
  webhooks     {stack.webhooks_url}   (CloudEvent target, pushed by the soul-events-webhooks subscription;
               signing secret in {stack.emulators.state_dir / 'webhook_secret'} unless SOUL_WEBHOOK_SECRET is set;
               loopback webhooks only to SOUL_WEBHOOK_LOOPBACK_PORTS: {os.environ.get('SOUL_WEBHOOK_LOOPBACK_PORTS') or 'none declared'})
  emulators    Pub/Sub {stack.emulators.env()['PUBSUB_EMULATOR_HOST']}, Firestore {stack.emulators.env()['FIRESTORE_EMULATOR_HOST']}, GCS {stack.emulators.env()['STORAGE_EMULATOR_HOST']}

Try:
  open {url}/ in a browser (the web page; the API reference is {url}/docs)
  curl "{url}/image?soul_id=nova&cue=penguin&user_id=user123"
  curl "{url}/tasks/<task_id from the answer>"

More runners: RUNNERS=3 make run, or AUTOSCALE=0:4 make run. Clients: eval "$(python -m emulators env)".
Ctrl-C stops everything.
""".strip("\n")


def _runners(stack: DevStack) -> str:
    policy = stack.config.autoscale
    if policy is not None:
        return f"autoscaled {policy.min_runners}..{policy.max_runners} (idle timeout {policy.idle_timeout_s:g} s)"
    return f"{stack.config.runners} runner(s)"


if __name__ == "__main__":
    sys.exit(main())
