"""Errors the HTTP server raises before the app (gunicorn, as functions-framework runs it) come in the error shape
with the security headers: tested against the real `functions_framework` server process on the emulators."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(emulator_stack, tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("front") / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", "api", "--source",
         str(REPO / "functions" / "main.py"), "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env={**os.environ, "THREADS": "2"}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the api server did not start"
            time.sleep(0.2)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
        log.close()


def raw(port: int, request: bytes) -> tuple[int, dict[str, str], dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x01Name: 1\r\n\r\n", 400, "invalid_argument"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
     "request_header_fields_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n", 400, "invalid_argument"),
])
def test_errors_before_the_app_are_in_the_error_shape(server, request_bytes, status, code):
    got, headers, body = raw(server, request_bytes)
    assert got == status
    assert headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
    assert set(body["error"]) == {"code", "message", "field"} and body["error"]["code"] == code


def test_the_real_server_answers_head_without_creating_work(server):
    response = requests.head(f"http://127.0.0.1:{server}/image?soul_id=nova&cue=penguin&user_id=u", timeout=10)
    assert response.status_code == 405 and response.headers["X-Frame-Options"] == "DENY"
