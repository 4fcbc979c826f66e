"""End to end on the stack `make run` starts: a webhook on POST /image is delivered by the `webhooks` function
(push subscription soul-events-webhooks) when the runner finishes the job, signed per Standard Webhooks, and
retried through soul-webhook-retries (its own push subscription) after a 503; and `GET /tasks/{id}/events`
streams the same task to its end."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from standardwebhooks import Webhook

from tests.e2e.conftest import WEBHOOK_SECRET

pytestmark = pytest.mark.e2e


def test_a_webhook_is_told_when_the_runner_finishes_and_the_event_stream_follows_the_task(stack):
    received: list[tuple[dict, bytes]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(503 if len(received) == 1 else 204)  # the first attempt fails: one retry
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", stack["receiver_port"]), Hook)  # the port the stack declares
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        base = stack["base"]
        url = f"http://127.0.0.1:{server.server_port}/soul"
        asked = requests.post(f"{base}/image", json={"soul_id": "nova", "cue": "lighthouse", "user_id": "hooked",
                                                     "webhook": url}, timeout=10)
        assert asked.status_code == 202, asked.text
        task_id = asked.json()["task_id"]
        with requests.get(f"{base}/tasks/{task_id}/events", stream=True, timeout=(5, 60)) as stream:
            lines = [line for line in stream.iter_lines(decode_unicode=True) if line.startswith("data: {")]
        updates = [json.loads(line[6:]) for line in lines if "task_id" in line]
        assert updates[0]["status"] in ("queued", "running") and updates[-1]["status"] == "succeeded"
        deadline = time.monotonic() + 60
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # nothing more comes
        (first_headers, _), (headers, body) = received
        assert first_headers["webhook-id"] == headers["webhook-id"] and len(received) == 2
        payload = Webhook(WEBHOOK_SECRET).verify(body, headers)
        assert payload["type"] == "soul.job.succeeded" and payload["data"]["task_id"] == task_id
        assert payload["data"]["result"]["variant"]["url"].startswith("http")
        [delivery] = requests.get(f"{base}/tasks/{task_id}", timeout=10).json()["deliveries"]
        assert delivery["status"] == "delivered"
        assert [a["status_code"] for a in delivery["attempts"]] == [503, 204]
    finally:
        server.shutdown()
        server.server_close()
