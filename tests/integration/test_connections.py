"""One caller cannot stall everyone (issue 19): the deployed api target (`api_async`, functions-framework's ASGI
mode) served as a real process on the emulators, probed with raw sockets as a hostile tenant and an anonymous
caller would: half-open connections, an 8 MiB request line, a tenant hoarding event streams, a chunked body of
1 GiB. Each probe checks that another tenant is still answered within 1 s."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from google.cloud import firestore

from schemas import names
from schemas._base import utcnow
from tests.support import function_server

HOARDER, OTHER = "key-hoarder-0123456789", "key-other-0123456789ab"
PER_TENANT, THREADS = 20, 2
HEAD_S = 4  # the test server's head and body-idle deadlines (10 s deployed): the 408s come sooner


@pytest.fixture(scope="module")
def server(emulator_stack, tmp_path_factory):
    """The api as deployed: `api_async` under functions-framework, with two tenants and two router threads."""
    folder = tmp_path_factory.mktemp("connections")
    keys = folder / "keys.json"
    keys.write_text(json.dumps([
        {"tenant": "hoarder", "role": "client", "key": HOARDER, "webhook_secret": "whsec_hoarder_0123456789abcdef"},
        {"tenant": "other", "role": "client", "key": OTHER, "webhook_secret": "whsec_other_0123456789abcdef01"},
    ]))
    env = {**os.environ, "THREADS": str(THREADS), "SOUL_API_KEYS_FILE": str(keys),
           "SOUL_SSE_MAX_STREAMS_PER_TENANT": str(PER_TENANT), "SOUL_SSE_POLL_INTERVAL_S": "0.2",
           "SOUL_QUOTA_REQUESTS_PER_SECOND": "500", "SOUL_QUOTA_BURST": "1000",
           "SOUL_HEADER_TIMEOUT_S": str(HEAD_S), "SOUL_BODY_IDLE_TIMEOUT_S": str(HEAD_S)}
    env.pop("SOUL_API_KEYS", None)
    with function_server("api_async", env, folder / "api.log") as (port, process):
        for key in (HOARDER, OTHER):  # warm: the first authenticated call opens the Firestore channel
            requests.get(f"http://127.0.0.1:{port}/me", headers={"X-API-Key": key}, timeout=30)
        yield port, process


def other_tenant_is_answered(port: int) -> None:
    """Another tenant's /me within 1 s (a functional bound: the answer must not queue behind the probe)."""
    response = requests.get(f"http://127.0.0.1:{port}/me", headers={"X-API-Key": OTHER}, timeout=1)
    assert response.status_code == 200 and response.json()["tenant"] == "other"


def read_head(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def with_body(sock: socket.socket, head: bytes) -> bytes:
    """`head` (as read_head gave it) completed with its Content-Length body."""
    top, _, body = head.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in top.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return top + b"\r\n\r\n" + body


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def body_of(data: bytes) -> dict:
    return json.loads(data.partition(b"\r\n\r\n")[2])


def recv_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def rss_kib(pid: int) -> int:
    """Resident memory of the server: the master and its worker(s)."""
    total = 0
    for candidate in [pid, *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]:
        for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def test_half_open_connections_hold_no_thread_and_are_closed_after_the_header_deadline(server):
    port, _ = server
    half_open = []
    for _ in range(4 * THREADS + 8):  # more than every thread there is
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        half_open.append(sock)
    try:
        other_tenant_is_answered(port)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        started = time.monotonic()
        answer = recv_all(half_open[0], timeout=HEAD_S + 5)
        assert time.monotonic() - started < HEAD_S + 5
        assert f"within {HEAD_S} s" in body_of(answer)["error"]["message"]  # the configured deadline, no other
        assert status_of(answer) == 408 and body_of(answer)["error"]["code"] == "request_timeout"
        for sock in half_open[1:]:  # every one of them was closed by the server
            assert recv_all(sock, timeout=5).startswith(b"HTTP/1.1 408")
    finally:
        for sock in half_open:
            sock.close()


def test_a_connection_that_sends_nothing_is_closed_too(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        answer = recv_all(sock, timeout=HEAD_S + 5)
    assert status_of(answer) == 408


def test_an_8_mib_request_line_is_refused_as_soon_as_it_breaks_the_limit(server):
    port, _ = server
    sent = [0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        def send():
            line = b"GET /" + b"a" * (8 * 1024 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            try:
                for start in range(0, len(line), 65536):
                    sock.sendall(line[start:start + 65536])
                    sent[0] = start + 65536
            except OSError:  # the server closed the connection: the rest was never read
                pass

        writer = threading.Thread(target=send)
        writer.start()
        answer = recv_all(sock, timeout=10)
        other_tenant_is_answered(port)
        writer.join(timeout=30)
    assert status_of(answer) == 414 and body_of(answer)["error"]["code"] == "uri_too_long"
    assert "Content-Security-Policy" in answer.decode("latin-1")


@pytest.mark.parametrize(("head", "status", "code"), [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
     "request_header_fields_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 4000) for i in range(12))
     + b"\r\n", 431, "request_header_fields_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x01Name: 1\r\n\r\n", 400, "invalid_argument"),
])
def test_heads_past_their_bounds_are_refused_in_the_error_shape(server, head, status, code):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = recv_all(sock, timeout=10)
    assert status_of(answer) == status and body_of(answer)["error"]["code"] == code
    assert b"X-Content-Type-Options: nosniff" in answer


def open_stream(port: int, key: str, task_id: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /tasks/{task_id}/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
    return sock, read_head(sock)


def test_a_tenant_hoarding_streams_gets_429s_while_another_tenant_is_answered(server, clean_firestore, drain_jobs):
    port, _ = server
    base = f"http://127.0.0.1:{port}"
    task_id = requests.get(f"{base}/image", params={"soul_id": "nova", "cue": "penguin", "user_id": "u1"},
                           headers={"X-API-Key": HOARDER}, timeout=10).json()["task_id"]
    streams, refused = [], []
    try:
        for _ in range(60):
            sock, head = open_stream(port, HOARDER, task_id)
            if status_of(head) == 200:
                streams.append((sock, head))
            else:
                refused.append((sock, with_body(sock, head)))
        assert len(streams) == PER_TENANT  # with 2 router threads: a stream holds none of them
        assert len(refused) == 60 - PER_TENANT
        for _, head in refused:
            assert status_of(head) == 429 and b"Retry-After: " in head
            assert body_of(head)["error"]["code"] == "too_many_streams"
        other_tenant_is_answered(port)
        assert requests.get(f"{base}/healthz", timeout=1).status_code == 200

        # Every admitted stream follows the job through the one shared watcher and ends with it.
        job = firestore.Client(project=os.environ["GCS_PROJECT_ID"]).collection(names.JOBS).document(task_id)
        job.update({"status": "succeeded", "stage": "done", "progress": 1.0, "eta_seconds": 0.0,
                    "finished_at": utcnow()})
        for sock, head in streams:
            text = (head + recv_all(sock, timeout=15)).decode()
            assert "event: update" in text and 'event: end\ndata: {"status": "succeeded"}' in text
    finally:
        for sock, _ in streams + refused:
            sock.close()
    # The slots came back: the tenant may follow again.
    deadline = time.monotonic() + 10
    while True:
        sock, head = open_stream(port, HOARDER, task_id)
        sock.close()
        if status_of(head) == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status_of(head) == 200


def test_a_chunked_body_of_1_gib_is_refused_without_growing_memory(server):
    port, process = server
    before = rss_kib(process.pid)
    chunk = b"a" * 65536
    sent = [0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /image HTTP/1.1\r\nHost: x\r\nX-API-Key: " + HOARDER.encode()
                     + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")

        def send():
            try:
                while sent[0] < 1 << 30:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent[0] += len(chunk)
                sock.sendall(b"0\r\n\r\n")
            except OSError:  # closed by the server after the 413
                pass

        writer = threading.Thread(target=send)
        writer.start()
        answer = recv_all(sock, timeout=30)
        writer.join(timeout=120)
    assert status_of(answer) == 413 and body_of(answer)["error"]["code"] == "payload_too_large"
    assert sent[0] < 1 << 30  # the server stopped reading long before the end
    assert rss_kib(process.pid) - before < 64 * 1024  # far below the 1 GiB that was offered
    other_tenant_is_answered(port)


def test_a_body_that_stalls_is_a_408(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /image HTTP/1.1\r\nHost: x\r\nX-API-Key: " + HOARDER.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"soul")
        started = time.monotonic()
        answer = recv_all(sock, timeout=30)
    assert status_of(answer) == 408 and body_of(answer)["error"]["code"] == "request_timeout"
    assert HEAD_S - 0.5 <= time.monotonic() - started < HEAD_S + 10


def test_a_head_and_a_long_lined_body_in_one_write_are_read_as_a_request(server):
    """The head's line limits end at its blank line: a body line longer than any header may be is the body's
    (clients send head and body in one write; under load the server reads them in one go)."""
    port, _ = server
    body = json.dumps({"soul": "ember", "cue": "a" * 20000}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /image HTTP/1.1\r\nHost: x\r\nX-API-Key: " + HOARDER.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        answer = read_head(sock)
    assert status_of(answer) == 400, answer[:300]


@pytest.mark.parametrize(("request_line", "status", "allow"), [
    (b"BREW /image HTTP/1.1", 405, "GET, OPTIONS, POST"),  # a method functions-framework's routes do not take
    (b"HEAD /image HTTP/1.1", 405, "GET, OPTIONS, POST"),  # HEAD never does GET /image's work; same Allow
    (b"PUT /tasks HTTP/1.1", 405, "GET, OPTIONS"),
    (b"GET * HTTP/1.1", 404, None),  # targets that are not a path
    (b"GET http://elsewhere.example/healthz HTTP/1.1", 404, None),
])
def test_odd_methods_and_targets_are_answered_by_the_api_in_the_error_shape(server, request_line, status, allow):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_line + b"\r\nHost: x\r\nX-API-Key: " + OTHER.encode() + b"\r\nConnection: close\r\n\r\n")
        answer = recv_all(sock, timeout=10)
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert status_of(answer) == status and "content-type: application/json" in head, answer[:300]
    if not request_line.startswith(b"HEAD"):
        assert set(body_of(answer)["error"]) == {"code", "message", "field"}
    if allow is not None:
        assert f"allow: {allow.lower()}\r\n" in head + "\r\n"


def test_a_declared_length_past_the_limit_is_a_413_at_once(server):
    """No body is waited for: the client that sends its head and waits (Expect: 100-continue) is told at once."""
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /image HTTP/1.1\r\nHost: x\r\nX-API-Key: " + OTHER.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n")
        answer = recv_all(sock, timeout=HEAD_S + 5)
    assert status_of(answer) == 413 and body_of(answer)["error"]["code"] == "payload_too_large"
    assert time.monotonic() - started < HEAD_S - 1


def test_wrong_keys_are_limited_by_the_peer_whatever_x_forwarded_for_says(server):
    """With no trusted proxy (SOUL_TRUSTED_PROXY_HOPS 0), a forged X-Forwarded-For must not make each guess a new
    source: uvicorn would take the header from a local peer. (Last in this module: it limits 127.0.0.1.)"""
    port, _ = server
    codes = [requests.get(f"http://127.0.0.1:{port}/me", timeout=5,
                          headers={"X-API-Key": f"wrong-{n}", "X-Forwarded-For": f"198.51.100.{n}"}).status_code
             for n in range(30)]
    assert codes[0] == 403 and 429 in codes, codes
