"""The runner's health responder: a tiny HTTP server on its own thread, for the managed instance group's
autohealing and for `docker ps`/HEALTHCHECK.

- `GET /healthz`: 200 while the runner is alive, 503 when not. Alive = its intake loop ticked recently, or a job
  is running (a long render blocks the loop), or it is still starting within its start-up grace.
- `GET /readyz`: 200 when it is ready = model loaded and pulling work (state READY or PROCESSING), 503 otherwise.
- Both answers carry `startup`: the runner's start-up phases so far (load, compile or load artifacts, warm-up, each
  with its seconds: `gpu_runner/pipelines/startup.py`) and the speed settings in force, so a slow cold start is a
  number an operator can read from the VM.

The decisions are pure functions over a `Vitals` snapshot, so they are tested without a server or a GPU; the
server only asks two callables (`is_alive`, `is_ready`) and answers. It never touches the runner's work: a
probe cannot slow a render down or change what the runner does. The port is reachable from the VPC, so a
connection may hold a thread for `CONNECTION_TIMEOUT_S` at most, at most `MAX_CONNECTIONS` are served at once (more
are closed at once), and every answer, other methods' 405 included, is JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog

log = structlog.get_logger(__name__)

# Runner states (gpu_runner.worker.WorkerState values) as plain strings: this module stays free of the worker.
READY_STATES = frozenset({"ready", "processing"})
DEAD_STATES = frozenset({"defunct", "stopped"})
CONNECTION_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `MAX_CONNECTIONS` of them; a client gone mid-answer is not an error."""

    daemon_threads = True
    request_queue_size = 128  # connections past the cap are accepted and closed, not left to SYN retries

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # the probes that matter come one at a time
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        log.info("health_connection_dropped", exc_info=False)


@dataclass(frozen=True)
class HealthPolicy:
    """How long a silent intake loop may stay silent, and how long start-up (model load) may take."""

    stale_after_s: float
    startup_grace_s: float


@dataclass(frozen=True)
class Vitals:
    """One snapshot of the runner, read from it at probe time (monotonic clock throughout)."""

    now: float
    started_at: float
    state: str
    last_tick: float | None  # None: the loop has not ticked yet
    ticks_known: bool = True  # False: this runner does not report ticks; judge by state alone


def is_alive(v: Vitals, policy: HealthPolicy) -> bool:
    if v.state in DEAD_STATES:
        return False
    if v.state == "processing":
        return True
    if not v.ticks_known:
        return v.state in READY_STATES or v.now - v.started_at <= policy.startup_grace_s
    if v.last_tick is not None and v.now - v.last_tick <= policy.stale_after_s:
        return True
    # Never ticked (still loading the model): alive for as long as start-up may take.
    return v.last_tick is None and v.now - v.started_at <= policy.startup_grace_s


def is_ready(v: Vitals, policy: HealthPolicy) -> bool:
    return v.state in READY_STATES and is_alive(v, policy)


class HealthServer:
    """`/healthz` and `/readyz` on `host:port` (port 0 picks a free one, see `.port`), served on a daemon thread."""

    def __init__(self, is_alive: Callable[[], bool], is_ready: Callable[[], bool], *, host: str, port: int,
                 details: Callable[[], dict] | None = None):
        checks = {"/healthz": ("alive", is_alive), "/readyz": ("ready", is_ready)}

        class Handler(BaseHTTPRequestHandler):
            timeout = CONNECTION_TIMEOUT_S  # a silent or slow client lets its thread go

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                check = checks.get(self.path.split("?", 1)[0])
                if check is None:
                    self._answer(404, {"status": "not_found", "paths": sorted(checks)})
                    return
                name, probe = check
                try:
                    ok = bool(probe())
                except Exception:  # noqa: BLE001 - a failing probe means "not healthy", said as a 503
                    log.warning("health_probe_failed", check=name, exc_info=True)
                    ok = False
                body = {"status": "ok" if ok else f"not {name}"}
                if details is not None:
                    try:
                        body["startup"] = details()
                    except Exception:  # noqa: BLE001 - the report is extra: never turn a health answer into an error
                        log.warning("health_details_failed", exc_info=True)
                self._answer(200 if ok else 503, body)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(405, {"status": "method_not_allowed", "allow": "GET"})

            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD  # noqa: N815

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                # http.server's own refusals (a bad request line, an unknown method) in JSON, not its HTML page
                self.close_connection = True
                self._answer(code, {"status": "bad_request" if code < 500 else "error",
                                    "message": message or self.responses.get(code, ("",))[0]})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def log_message(self, *_args) -> None:  # probes every few seconds: no access log noise
                return

        self._server = _BoundedServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health_server_started", port=self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_runner(runner, *, host: str, port: int, policy: HealthPolicy, clock: Callable[[], float]) -> HealthServer:
    """Start the responder for a `gpu_runner.worker.Runner`: reads `runner.state` and, where the runner has them,
    `runner.last_tick` (time.monotonic() of its last intake loop iteration) and `runner.startup_report()` at each
    probe."""
    started_at = clock()
    ticks_known = hasattr(runner, "last_tick")

    def vitals() -> Vitals:
        return Vitals(now=clock(), started_at=started_at, state=runner.state.value,
                      last_tick=getattr(runner, "last_tick", None), ticks_known=ticks_known)

    return HealthServer(lambda: is_alive(vitals(), policy), lambda: is_ready(vitals(), policy),
                        host=host, port=port, details=getattr(runner, "startup_report", None)).start()
