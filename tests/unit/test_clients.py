"""The clients without a server: the generated files are what the current API generates (drift), every endpoint
of the route table is reachable from both clients, soul_client imports nothing of the server, and its pure
parts work (retry rules, Retry-After, SSE parsing, Standard Webhooks against the server's own signer, the retry
loop over a fake transport). The TypeScript unit tests run under node's test runner from here."""

from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

import soul_client
from soul_client import AsyncClient, Client, RetryPolicy, models
from soul_client._retry import parse_retry_after
from soul_client._sse import parse_events
from functions.http.routes import ENDPOINTS

REPO = Path(__file__).resolve().parents[2]
TS = REPO / "clients" / "typescript"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_committed_clients_are_what_the_current_api_generates():
    run = subprocess.run([sys.executable, "clients/generate.py", "--check"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]


def test_every_endpoint_is_reachable_from_both_clients():
    names = {ep.name for ep in ENDPOINTS}
    assert set(soul_client.OPERATIONS) == names
    for name in names:
        assert callable(getattr(Client, name)) and callable(getattr(AsyncClient, name)), name
    ts_ids = set(re.findall(r"^  (\w+): \{ method:", (TS / "src" / "operations.ts").read_text(), re.M))
    assert ts_ids == names


def test_soul_client_imports_nothing_of_the_server():
    server = {"functions", "gpu_runner", "schemas", "soul_common", "emulators", "soul_cli", "flask", "google"}
    for path in (REPO / "clients" / "python" / "soul_client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in server, f"{path.name} imports {name}"


def test_retry_rules():
    policy = RetryPolicy(max_attempts=3, backoff_s=1.0, max_backoff_s=4.0)
    assert policy.delay(1, status=429, retry_after=2.5, idempotent=True) == 2.5
    assert policy.delay(1, status=429, retry_after=2.5, idempotent=False) is None
    assert policy.delay(1, status=400, retry_after=None, idempotent=True) is None
    assert policy.delay(3, status=503, retry_after=None, idempotent=True) is None
    assert policy.delay(1, status=503, retry_after=3600, idempotent=True) is None
    assert 1.0 <= policy.delay(2, status=None, retry_after=None, idempotent=True) <= 2.0
    assert parse_retry_after("7") == 7 and parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert 8 < parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))) <= 10


def test_sse_parsing():
    lines = [": heartbeat", "retry: 1000", "event: update", 'data: {"a":', "data: 1}", "", "data: x", ""]
    events = list(parse_events(lines))
    assert [(e.event, e.data) for e in events] == [("update", '{"a":\n1}'), ("message", "x")]


def test_webhooks_signed_by_the_server_library_verify_and_tampering_does_not():
    body = json.dumps({"type": "completed", "data": {"task_id": "t1"}})
    now = int(time.time())
    from datetime import datetime, timezone

    signature = Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(now, timezone.utc), body)
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(now), "Webhook-Signature": f"v1,bogus {signature}"}
    assert soul_client.verify_webhook(headers, body.encode(), SECRET) == json.loads(body)
    for bad in ({**headers, "Webhook-Timestamp": str(now - 3600)}, {**headers, "Webhook-Signature": "v1,AAAA"},
                {k: v for k, v in headers.items() if k != "Webhook-Id"}):
        with pytest.raises(soul_client.WebhookVerificationError):
            soul_client.verify_webhook(bad, body, SECRET)
    with pytest.raises(soul_client.WebhookVerificationError):
        soul_client.verify_webhook(headers, body + " ", SECRET)
    other = "whsec_" + base64.b64encode(b"another-secret-0123456789").decode()
    with pytest.raises(soul_client.WebhookVerificationError):
        soul_client.verify_webhook(headers, body, other)


def _error(status: int, code: str, field: str | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code, "field": field}}, headers=headers)


def test_a_429_is_retried_after_retry_after_with_the_same_idempotency_key():
    seen, waits = [], []
    answers = [_error(429, "rate_limited", **{"Retry-After": "2"}), _error(503, "unavailable"),
               httpx.Response(202, json={"status": "queued", "pk_id": "p", "task_id": "img-p-0", "status_url": "/t",
                                         "estimated_seconds": 1.0})]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Idempotency-Key"))
        return answers.pop(0)

    with Client("http://soul.test", http=httpx.Client(transport=httpx.MockTransport(handler)),
                sleep=waits.append) as soul:
        handle = soul.image("nova", "penguin", "u1")
    assert handle.task_id == "img-p-0" and isinstance(handle.answer, models.ImageQueued)
    assert len(seen) == 3 and seen[0] and len(set(seen)) == 1
    assert waits[0] == 2 and 0 < waits[1] <= 1.0


def test_errors_are_typed_and_unsafe_calls_are_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/me":
            return _error(400, "invalid_parameter", "cue")
        return _error(429, "rate_limited", **{"Retry-After": "1"})

    with Client("http://soul.test", http=httpx.Client(transport=httpx.MockTransport(handler)),
                sleep=lambda s: None) as soul:
        with pytest.raises(soul_client.BadRequest) as bad:
            soul.me()
        assert (bad.value.status, bad.value.code, bad.value.field) == (400, "invalid_parameter", "cue")
        with pytest.raises(soul_client.RateLimited) as limited:
            soul.mark_seen(variant_id="v", user_id="u")  # a POST without an idempotency key: sent once
        assert limited.value.retry_after == 1
    assert calls == ["/me", "/image/mark-seen"]

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    waits = []
    with Client("http://soul.test", http=httpx.Client(transport=httpx.MockTransport(refused)), sleep=waits.append,
                retry=RetryPolicy(max_attempts=3)) as soul:
        with pytest.raises(soul_client.TransportError):
            soul.healthz()
    assert len(waits) == 2


def test_typescript_unit_tests():
    assert (TS / "node_modules").is_dir(), "clients/typescript/node_modules is missing: run `make clients-setup`"
    subprocess.run(["npm", "run", "--silent", "build"], cwd=TS, check=True, timeout=300)
    run = subprocess.run(["node", "--test", "dist/test/unit.test.js"], cwd=TS, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "# fail 0" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("clients_generate", REPO / "clients" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_endpoints_added_later_with_uploads_or_empty_answers_generate_and_are_called():
    """Regeneration is the only step for a new endpoint, whatever it takes or answers (an upload, no body)."""
    generate = _generator()
    document = json.loads(generate.openapi_text())
    document["paths"]["/souls/{soul_id}/lora"] = {"post": {
        "operationId": "lora_upload", "summary": "Upload a LoRA.",
        "parameters": [{"name": "soul_id", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}],
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
        "responses": {"204": {"description": "Stored."}, "200": {"description": "Raw", "content": {
            "application/json": {"schema": {"type": "object"}}}}},
        "security": [{"apiKey": []}],
    }}
    source = generate.python_operations(document)
    assert re.search(r"def lora_upload\(\s*self,\s*soul_id: str,\s*body: bytes,\s*\*,\s*idempotency_key", source)
    namespace: dict = {}
    exec(compile(source, "_operations.py", "exec"), namespace)  # noqa: S102 - the generated module itself
    operation = namespace["OPERATIONS"]["lora_upload"]
    assert operation.body == "<bytes>" and operation.body_media == "application/octet-stream"
    assert operation.responses == {204: "<empty>", 200: "<json>"}
    assert "lora_upload: { method: \"POST\"" in generate.typescript_operations(document)

    received = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append((request.headers["Content-Type"], request.content, request.headers.get("Idempotency-Key")))
        return httpx.Response(204) if len(received) == 1 else httpx.Response(200, json={"ok": True})

    with Client("http://soul.test", http=httpx.Client(transport=httpx.MockTransport(handler))) as soul:
        assert soul._operate(operation, {"soul_id": "nova"}, {}, b"\x00weights") is None
        assert soul._operate(operation, {"soul_id": "nova"}, {}, b"again") == {"ok": True}
    assert received[0][:2] == ("application/octet-stream", b"\x00weights") and received[0][2]
