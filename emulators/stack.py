"""The coordinator of the local stand-ins: `EmulatorStack` starts the official Pub/Sub and Firestore emulators
and fake-gcs-server side by side (each in its own process group, output in `<state_dir>/logs/`), waits until all
three answer, provisions them (`emulators.provision`, `emulators.signing_key`) and hands out the environment
that points the google-cloud clients at them. `StackConfig` is its only configuration."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from emulators import _binaries, _process
from emulators._process import ProcessRecord, ReadinessCheck
from emulators.errors import EmulatorError
from emulators.signing_key import KEY_FILE_NAME, ensure_signing_key

__all__ = ["EmulatorError", "EmulatorStack", "StackConfig", "StackPorts"]

PUBSUB = "pubsub"
FIRESTORE = "firestore"
GCS = "gcs"
# Command-line substrings that identify each stand-in's processes (checked before `down` kills a group).
MARKERS = {PUBSUB: "cloud-pubsub-emulator", FIRESTORE: "cloud-firestore-emulator", GCS: "fake-gcs-server"}


@dataclass(frozen=True)
class StackConfig:
    """Where and how to run the stand-ins. Port 0 means "pick a free one"."""

    project_id: str = "soul-local"
    bucket: str = "soul-local-media"
    host: str = "127.0.0.1"
    pubsub_port: int = 0
    firestore_port: int = 0
    firestore_websocket_port: int = 0
    gcs_port: int = 0
    state_dir: Path = Path(".soul/emulators")
    # Backoff between redeliveries on the runner's subscription. Both 0 = no retry policy (immediate
    # redelivery): the fast setting for tests, since the emulator rounds any policy up to ~2 s steps.
    retry_min_backoff_s: float = 1.0
    retry_max_backoff_s: float = 30.0
    start_timeout_s: float = 90.0
    # Google Cloud SDK root; None = $CLOUDSDK_ROOT_DIR, else the SDK of the `gcloud` on PATH.
    sdk_root: Path | None = None


@dataclass(frozen=True)
class StackPorts:
    pubsub: int
    firestore: int
    firestore_websocket: int
    gcs: int


class EmulatorStack:
    """The three stand-ins as one unit: `start()`, `provision()`, `env()`, `stop()`; or `with EmulatorStack(cfg)`."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.state_dir = Path(config.state_dir).resolve()
        self._ports: StackPorts | None = None
        self._processes: dict[str, tuple[subprocess.Popen, ProcessRecord]] = {}
        self._push_endpoint: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start all three at once (the JVMs take seconds to boot, so in parallel), then wait until each
        answers HTTP. On any failure everything already started is stopped before the error is raised."""
        if self._processes:
            raise EmulatorError("this stack is already started; stop() it first")
        commands = self._commands(self._choose_ports())  # resolves every binary before anything starts
        try:
            checks = []
            for name, (argv, ready_url, expect_body) in commands.items():
                popen, record = _process.spawn(name, argv, self.state_dir / "logs" / f"{name}.log", MARKERS[name])
                self._processes[name] = (popen, record)
                checks.append(ReadinessCheck(popen, record, ready_url, expect_body))
            _process.wait_until_ready(checks, self.config.start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def provision(self, push_endpoint: str | None = None, webhooks_endpoint: str | None = None) -> None:
        """Topics, subscriptions, the bucket and the local signing key; safe to call again. With
        `push_endpoint`, also the push subscription that feeds soul-requests to the ingest function; with
        `webhooks_endpoint`, the one that feeds soul-events to the webhooks function."""
        # Imported here: the google-cloud clients take a second to import, which `down`, `env` and unit
        # tests that merely import this package should not pay.
        from emulators import provision as _provision

        ports = self.ports
        self._push_endpoint = push_endpoint
        _provision.provision_pubsub(
            f"{self.config.host}:{ports.pubsub}", self.config.project_id,
            retry_min_backoff_s=self.config.retry_min_backoff_s,
            retry_max_backoff_s=self.config.retry_max_backoff_s,
            push_endpoint=push_endpoint,
            webhooks_endpoint=webhooks_endpoint,
        )
        _provision.provision_bucket(self.gcs_endpoint, self.config.project_id, self.config.bucket)
        ensure_signing_key(self.state_dir, self.config.project_id)

    def restart_pubsub(self) -> None:
        """Kill the Pub/Sub emulator (SIGKILL: every message, acked or not, is lost, as in a real crash) and start it
        again on the same port, then provision it again. The chaos suite's "backlog lost" fault."""
        popen, record = self._processes.pop(PUBSUB)
        _process.stop_groups([(record.pgid, popen)], grace_s=0.0)
        argv, ready_url, expect_body = self._commands(self.ports)[PUBSUB]
        popen, record = _process.spawn(PUBSUB, argv, record.log_path, MARKERS[PUBSUB], append=True)
        self._processes[PUBSUB] = (popen, record)
        _process.wait_until_ready([ReadinessCheck(popen, record, ready_url, expect_body)],
                                  self.config.start_timeout_s)
        self.provision(push_endpoint=self._push_endpoint)

    def stop(self) -> None:
        """Stop every process group this stack started; a no-op when nothing runs."""
        groups = [
            (record.pgid, popen)
            for popen, record in self._processes.values()
            # While our unreaped leader lives its pgid cannot be recycled; after that, check before killing.
            if popen.poll() is None or _process.is_ours(record)
        ]
        try:
            _process.stop_groups(groups)
        finally:
            for popen, _ in self._processes.values():
                popen.poll()
            self._processes.clear()
            self._ports = None

    def __enter__(self) -> EmulatorStack:
        self.start()
        try:
            self.provision()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- what clients need -------------------------------------------------------------------------------------

    @property
    def ports(self) -> StackPorts:
        if self._ports is None or not self._processes:
            raise EmulatorError("the emulator stack is not started")
        return self._ports

    @property
    def processes(self) -> tuple[ProcessRecord, ...]:
        """Records (pid, pgid, log file) of the running stand-ins."""
        return tuple(record for _, record in self._processes.values())

    @property
    def gcs_endpoint(self) -> str:
        return f"http://{self.config.host}:{self.ports.gcs}"

    @property
    def signing_key_file(self) -> Path:
        """Where provision() writes the local service-account key used for V4 signed URLs."""
        return self.state_dir / KEY_FILE_NAME

    def env(self) -> dict[str, str]:
        """Environment that points google-cloud clients (and the project's settings) at this stack."""
        ports, host, project = self.ports, self.config.host, self.config.project_id
        return {
            "PUBSUB_EMULATOR_HOST": f"{host}:{ports.pubsub}",
            "FIRESTORE_EMULATOR_HOST": f"{host}:{ports.firestore}",
            "STORAGE_EMULATOR_HOST": self.gcs_endpoint,
            "GCS_PROJECT_ID": project,
            "GOOGLE_CLOUD_PROJECT": project,
            "GCS_BUCKET_NAME": self.config.bucket,
            "SOUL_SIGNING_KEY_FILE": str(self.signing_key_file),
            "SOUL_SIGNED_URL_ENDPOINT": self.gcs_endpoint,
        }

    def reset_firestore(self) -> None:
        """Delete every document in the Firestore emulator's default database (between tests)."""
        url = (
            f"http://{self.config.host}:{self.ports.firestore}/emulator/v1/projects/"
            f"{self.config.project_id}/databases/(default)/documents"
        )
        status = _process.http_request("DELETE", url)
        if status != 200:
            raise EmulatorError(f"resetting Firestore failed: DELETE {url} answered {status}")

    # --- internals ---------------------------------------------------------------------------------------------

    def _choose_ports(self) -> StackPorts:
        cfg = self.config
        wanted = [cfg.pubsub_port, cfg.firestore_port, cfg.firestore_websocket_port, cfg.gcs_port]
        labels = ["Pub/Sub", "Firestore", "Firestore websocket", "fake-gcs-server"]
        if len({port for port in wanted if port}) != len([port for port in wanted if port]):
            raise EmulatorError(f"configured ports must differ, got {dict(zip(labels, wanted))}")
        for port, label in zip(wanted, labels):
            if port:
                _process.ensure_port_free(cfg.host, port, label)
        free = iter(_process.free_ports(cfg.host, wanted.count(0)))
        self._ports = StackPorts(*(port or next(free) for port in wanted))
        return self._ports

    def _commands(self, ports: StackPorts) -> dict[str, tuple[list[str], str, str | None]]:
        """Per stand-in: its argv, the URL that answers once it is ready, and the body expected there."""
        host = self.config.host
        sdk_root = _binaries.find_sdk_root(self.config.sdk_root)
        pubsub = _binaries.sdk_launcher(sdk_root, _binaries.PUBSUB_LAUNCHER, "pubsub-emulator")
        firestore = _binaries.sdk_launcher(sdk_root, _binaries.FIRESTORE_LAUNCHER, "cloud-firestore-emulator")
        gcs_address = f"{host}:{ports.gcs}"
        return {
            PUBSUB: (
                [str(pubsub), f"--host={host}", f"--port={ports.pubsub}"],
                f"http://{host}:{ports.pubsub}/", "Ok",
            ),
            FIRESTORE: (
                # The websocket port is pinned: left to itself the emulator takes a fixed default that collides
                # between two stacks on one machine.
                [str(firestore), "start", f"--host={host}", f"--port={ports.firestore}",
                 f"--websocket_port={ports.firestore_websocket}"],
                f"http://{host}:{ports.firestore}/", "Ok",
            ),
            GCS: (
                [str(_binaries.fake_gcs_binary()), "-scheme", "http", "-host", host, "-port", str(ports.gcs),
                 "-backend", "memory", "-log-level", "warn",
                 # Signed URLs and media links must name this address, not the container default.
                 "-public-host", gcs_address, "-external-url", f"http://{gcs_address}"],
                f"http://{gcs_address}/storage/v1/b", None,
            ),
        }
