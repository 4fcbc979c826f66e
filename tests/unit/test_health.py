"""The runner's health responder: the alive/ready rules as a table, and the HTTP answers of the real server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from gpu_runner.health import HealthPolicy, HealthServer, Vitals, is_alive, is_ready

POLICY = HealthPolicy(stale_after_s=60.0, startup_grace_s=900.0)
T0 = 1000.0


def vitals(state: str, *, age: float, tick_age: float | None, ticks_known: bool = True) -> Vitals:
    now = T0 + age
    return Vitals(now=now, started_at=T0, state=state,
                  last_tick=None if tick_age is None else now - tick_age, ticks_known=ticks_known)


@pytest.mark.parametrize(
    ("snapshot", "alive", "ready"),
    [
        # loading the model: no tick yet, within the start-up grace -> alive, not ready
        (vitals("new", age=300, tick_age=None), True, False),
        (vitals("starting", age=899, tick_age=None), True, False),
        # start-up took longer than the grace and the loop never ticked -> dead (autohealing recreates the VM)
        (vitals("new", age=901, tick_age=None), False, False),
        # pulling, loop ticking -> alive and ready
        (vitals("ready", age=5000, tick_age=3), True, True),
        # loop silent for longer than stale_after while idle -> wedged
        (vitals("ready", age=5000, tick_age=61), False, False),
        # a long render blocks the loop: a running job keeps it alive and ready
        (vitals("processing", age=5000, tick_age=1800), True, True),
        # stopping (SIGTERM drain): alive while the loop still ticks, never ready (takes no new work)
        (vitals("stopping", age=5000, tick_age=2), True, False),
        # terminal states are never alive
        (vitals("defunct", age=10, tick_age=None), False, False),
        (vitals("stopped", age=5000, tick_age=1), False, False),
        # a runner that does not report ticks is judged by its state alone
        (vitals("ready", age=5000, tick_age=None, ticks_known=False), True, True),
        (vitals("starting", age=5000, tick_age=None, ticks_known=False), False, False),
    ],
)
def test_alive_and_ready_rules(snapshot, alive, ready):
    assert is_alive(snapshot, POLICY) is alive
    assert is_ready(snapshot, POLICY) is ready


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_answers_each_probe_from_its_callable():
    state = {"alive": True, "ready": False}

    def broken() -> bool:
        raise RuntimeError("probe blew up")

    server = HealthServer(lambda: state["alive"], lambda: state["ready"], host="127.0.0.1", port=0).start()
    try:
        assert get(server.port, "/healthz") == (200, {"status": "ok"})
        assert get(server.port, "/readyz") == (503, {"status": "not ready"})
        state.update(alive=False, ready=True)
        assert get(server.port, "/healthz") == (503, {"status": "not alive"})
        assert get(server.port, "/readyz?verbose=1") == (200, {"status": "ok"})
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.close()

    failing = HealthServer(broken, broken, host="127.0.0.1", port=0).start()
    try:
        assert get(failing.port, "/healthz") == (503, {"status": "not alive"})
    finally:
        failing.close()


def test_both_answers_carry_the_start_up_report_and_a_failing_report_changes_no_answer():
    from gpu_runner.pipelines.startup import StartupReport

    ticks = iter(range(100))
    report = StartupReport(clock=lambda: float(next(ticks)))
    with report.phase("load", model="tiny"):
        pass
    report.note(artifacts="loaded")
    server = HealthServer(lambda: True, lambda: False, host="127.0.0.1", port=0, details=report.snapshot).start()
    try:
        status, body = get(server.port, "/healthz")
        assert status == 200
        assert body["startup"]["phases"] == [{"phase": "load", "seconds": 1.0, "outcome": "ok", "model": "tiny"}]
        assert body["startup"]["artifacts"] == "loaded"
        assert get(server.port, "/readyz")[1]["startup"]["phases"][0]["phase"] == "load"
    finally:
        server.close()

    def broken() -> dict:
        raise RuntimeError("report blew up")

    server = HealthServer(lambda: True, lambda: True, host="127.0.0.1", port=0, details=broken).start()
    try:
        assert get(server.port, "/healthz") == (200, {"status": "ok"})
    finally:
        server.close()


def test_idle_connections_cannot_pin_the_runners_threads_and_every_answer_is_json():
    """300 idle sockets held 300 runner threads for as long as they stayed open; POST got http.server's HTML 501."""
    import socket
    import threading
    import time

    from gpu_runner import health

    server = HealthServer(lambda: True, lambda: True, host="127.0.0.1", port=0)
    server._server.RequestHandlerClass.timeout = 0.5  # CONNECTION_TIMEOUT_S, shortened for the test
    server.start()
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(60)]
    try:
        time.sleep(0.3)
        assert threading.active_count() - before <= health.MAX_CONNECTIONS  # past the cap: closed at once
        time.sleep(1.0)  # past the timeout: the idle ones let their threads go
        assert threading.active_count() - before <= 1
        assert get(server.port, "/healthz") == (200, {"status": "ok"})
        for method in ("POST", "DELETE", "BREW"):
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}/healthz", method=method)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code in (405, 501) and refused.value.headers["Content-Type"] == "application/json"
            assert "status" in json.loads(refused.value.read())
    finally:
        for sock in idle:
            sock.close()
        server.close()
