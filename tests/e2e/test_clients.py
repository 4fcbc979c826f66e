"""Both clients against the whole stack as processes (emulators, api, ingest, webhooks, the runner with the tiny
model), with tenants from a keys file: each client submits an image and waits for it over server-sent events and
over polling, follows its progress, cancels, lists and pages, is rate limited (429) and retries after
`Retry-After`, verifies a webhook the stack delivered, and gets a typed error for a bad request. The TypeScript
client's half runs under node's test runner (clients/typescript/test/stack.test.ts) on this same stack."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import soul_client
from soul_client import AsyncClient, Client, models
from emulators._process import free_ports
from tests.e2e.conftest import devstack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TS = REPO / "clients" / "typescript"
ACME_KEY, TIGHT_KEY = "acme-client-key-0001", "tight-client-key-001"
ACME_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TIGHT_SECRET = "whsec_dGlnaHQtc2VjcmV0LTAxMjM0NTY3ODk="


class Receiver:
    """A webhook target on this machine that records each delivery as (headers, raw body)."""

    def __init__(self, port: int) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        received = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_task(self, task_id: str, timeout_s: float = 60.0) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for headers, body in list(self.deliveries):
                if task_id.encode() in body and b'"type":"soul.job.succeeded"' in body:
                    return headers, body
            time.sleep(0.2)
        raise AssertionError(f"no completed delivery for {task_id}: {self.deliveries}")


@pytest.fixture(scope="module")
def soul_stack(tmp_path_factory):
    keys = tmp_path_factory.mktemp("client-keys") / "keys.json"
    keys.write_text(json.dumps([
        {"tenant": "acme", "role": "client", "key": ACME_KEY, "webhook_secret": ACME_SECRET},
        # One request per two seconds: a few calls in a row get a 429 with Retry-After.
        {"tenant": "tight", "role": "client", "key": TIGHT_KEY, "webhook_secret": TIGHT_SECRET,
         "quota": {"requests_per_second": 0.5, "burst": 1}},
    ]))
    # Local webhooks reach only declared ports: one for this module's receiver, one for the TypeScript test's.
    python_port, typescript_port = free_ports("127.0.0.1", 2)
    with devstack(tmp_path_factory, "client-stack", SOUL_API_KEYS_FILE=str(keys), SOUL_WEBHOOK_SECRET="",
                  SOUL_WEBHOOK_LOOPBACK_PORTS=f"{python_port},{typescript_port}") as stack:
        yield {**stack, "receiver_ports": (python_port, typescript_port)}


@pytest.fixture(scope="module")
def receiver(soul_stack):
    target = Receiver(soul_stack["receiver_ports"][0])
    yield target
    target.server.shutdown()


def cue(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:8]}"  # a cue nobody asked before: the answer is a new task


def test_python_client_images_over_events_and_polling_progress_and_webhooks(soul_stack, receiver):
    with Client(soul_stack["base"], api_key=ACME_KEY, timeout=30) as soul:
        penguin = cue("penguin")
        handle = soul.image("nova", penguin, "user-py", webhook=receiver.url)
        assert handle.task_id and handle.answer.status == models.JobStatus.queued
        updates = list(handle.progress(timeout=180))  # over server-sent events
        assert updates[-1].status == models.JobStatus.succeeded
        assert any(u.status == models.JobStatus.running for u in updates)
        result = handle.wait(timeout=30)
        assert result.variant is not None and result.variant.url.startswith("http")

        polled = soul.image("nova", cue("owl"), "user-py").wait(timeout=180, events=False, poll_interval=0.3)
        assert polled.variant is not None and polled.variant.width > 0

        # The same cue for a user who has seen nothing: the variant exists, the answer is ready at once.
        hit = soul.image("nova", penguin, "user-py2")
        assert hit.task_id is None and hit.wait().variant.variant_id == result.variant.variant_id

        # The webhook the stack delivered verifies with the tenant's secret; a changed body does not.
        headers, body = receiver.for_task(handle.task_id)
        payload = soul_client.verify_webhook(headers, body, ACME_SECRET)
        assert payload["type"] == "soul.job.succeeded" and payload["data"]["task_id"] == handle.task_id
        with pytest.raises(soul_client.WebhookVerificationError):
            soul_client.verify_webhook(headers, body.replace(b"succeeded", b"failed"), ACME_SECRET)


def test_python_client_cancels_lists_pages_and_types_errors(soul_stack):
    with Client(soul_stack["base"], api_key=ACME_KEY, timeout=30) as soul:
        handles = [soul.image("nova", cue("cat"), "user-list") for _ in range(3)]
        canceled = handles[-1].cancel()
        assert canceled.status == models.JobStatus.canceled or canceled.cancel_requested
        with pytest.raises(soul_client.TaskFailed) as failed:
            handles[-1].wait(timeout=120)
        assert failed.value.task.status == models.JobStatus.canceled

        listed = list(soul.tasks(user_id="user-list", page_size=2))  # two pages at least
        assert {h.task_id for h in handles} <= {t.task_id for t in listed} and len(listed) == len(set(
            t.task_id for t in listed))
        assert [t.task_id for t in soul.tasks(user_id="user-list", page_size=1, limit=2)] == [
            t.task_id for t in listed[:2]]

        with pytest.raises(soul_client.BadRequest) as bad:
            soul.call("image_get", query={"soul_id": "Not A Soul!", "cue": "penguin", "user_id": "u1"})
        assert bad.value.status == 400 and bad.value.field == "soul_id" and bad.value.code
        with pytest.raises(soul_client.NotFound):
            soul.task_get("img-00000000000000000000000000000000-0")
        with pytest.raises(soul_client.Unauthorized):
            with Client(soul_stack["base"]) as anonymous:
                anonymous.me()
        for h in handles[:2]:
            h.wait(timeout=180)


def test_python_client_retries_a_429_after_retry_after(soul_stack):
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    # The limiter may spread a tenant's burst over shards: ask until it says no (a handful of calls at most).
    with Client(soul_stack["base"], api_key=TIGHT_KEY, retry=soul_client.NO_RETRIES) as strict:
        with pytest.raises(soul_client.RateLimited) as limited:
            for _ in range(30):
                strict.me()
        assert limited.value.status == 429 and limited.value.retry_after and limited.value.retry_after > 0
        assert limited.value.code
    # The same tenant, still over its limit: with retries on, each call waits as long as Retry-After says.
    with Client(soul_stack["base"], api_key=TIGHT_KEY, sleep=sleep,
                retry=soul_client.RetryPolicy(max_attempts=10)) as patient:
        assert [patient.me().tenant for _ in range(3)] == ["tight"] * 3
    assert waits and all(0 < w <= 60 for w in waits)  # the waits came from Retry-After


def test_async_client_waits_over_events_pages_and_types_errors(soul_stack):
    async def scenario() -> None:
        async with AsyncClient(soul_stack["base"], api_key=ACME_KEY, timeout=30) as soul:
            handle = await soul.image("nova", cue("fox"), "user-async")
            updates = [u async for u in handle.progress(timeout=180)]
            assert updates[-1].status == models.JobStatus.succeeded
            result = await handle.wait()
            assert result.variant is not None
            bee = await soul.image("nova", cue("bee"), "user-async")
            polled = await bee.wait(timeout=180, events=False)
            assert polled.variant is not None
            listed = [t.task_id async for t in soul.tasks(user_id="user-async", page_size=1)]
            assert sorted(listed) == sorted([handle.task_id, bee.task_id])
            with pytest.raises(soul_client.BadRequest):
                await soul.call("image_get", query={"soul_id": "Not A Soul!", "cue": "x", "user_id": "u1"})

    asyncio.run(scenario())


def test_typescript_client_against_the_stack(soul_stack):
    """clients/typescript/test/stack.test.ts under node's test runner, on this stack (built by `npm run build`)."""
    subprocess.run(["npm", "run", "--silent", "build"], cwd=TS, check=True, timeout=300)
    env = {**os.environ, "SOUL_API_URL": soul_stack["base"], "SOUL_API_KEY": ACME_KEY, "SOUL_TIGHT_KEY": TIGHT_KEY,
           "SOUL_WEBHOOK_SECRET": ACME_SECRET, "SOUL_WEBHOOK_PORT": str(soul_stack["receiver_ports"][1])}
    run = subprocess.run(["node", "--test", "dist/test/stack.test.js"], cwd=TS, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "# fail 0" in run.stdout and "# pass 0" not in run.stdout
