"""Errors the HTTP server raises before the app (gunicorn, as functions-framework runs it) come in the error shape
with the security headers: tested against the real `functions_framework` server process on the emulators."""

from __future__ import annotations

import json
import os
import socket

import pytest
import requests

from tests.support import function_server


@pytest.fixture(scope="module")
def server(emulator_stack, tmp_path_factory):
    log = tmp_path_factory.mktemp("front") / "api.log"
    with function_server("api", {**os.environ, "THREADS": "2"}, log) as (port, _):
        yield port


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
