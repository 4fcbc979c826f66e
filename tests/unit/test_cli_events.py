"""The `soul` CLI follows a task by its server-sent events when the API offers them: it shows each update as it
arrives and reads the task once, at the end, for the signed result (no polling); a stream that ends early
(the API's duration limit) falls back to polling."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from typer.testing import CliRunner

from soul_cli.errors import ExitCode
from soul_client._sse import parse_events
from soul_cli.main import app
from tests.unit.test_cli import TASK_ID, URL, queued, task


def sse(*events: tuple[str, dict]) -> bytes:
    return ("retry: 2000\n\n: keepalive\n\n" + "".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)).encode()


def update(status: str, progress: float, stage: str) -> dict:
    return {"task_id": TASK_ID, "status": status, "stage": stage, "progress": progress, "eta_seconds": 1.0}


class Api:
    def __init__(self, stream: bytes, polls: list[dict]):
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.paths.append(self.path.split("?")[0])
                if self.path.startswith("/image"):
                    status, body, kind = 202, queued().model_dump_json().encode(), "application/json"
                elif self.path.endswith("/events"):
                    status, body, kind = 200, stream, "text/event-stream"
                else:
                    status, body, kind = 200, json.dumps(polls.pop(0) if len(polls) > 1 else polls[0]).encode(), \
                        "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()

    def run(self, *args: str):
        try:
            return CliRunner().invoke(app, ["image", "nova", "penguin", "--user", "user123", *args],
                                      env={"SOUL_API_URL": self.url, "SOUL_API_KEY": None})
        finally:
            self.server.shutdown()
            self.server.server_close()


def test_the_cli_follows_events_and_reads_the_task_once_at_the_end():
    stream = sse(("update", update("queued", 0.0, "queued")), ("update", update("running", 0.5, "denoise")),
                 ("update", update("succeeded", 1.0, "done")), ("end", {"status": "succeeded"}))
    api = Api(stream, [task("succeeded").model_dump(mode="json")])
    result = api.run("--poll-interval", "5")  # a poll would take 5 s: the events make it unnecessary
    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout.strip().splitlines()[-1] == URL
    assert "running, denoise, 50%" in result.stderr
    assert api.paths == ["/image", f"/tasks/{TASK_ID}/events", f"/tasks/{TASK_ID}"]


def test_a_stream_that_ends_early_falls_back_to_polling():
    stream = sse(("update", update("running", 0.2, "denoise")), ("timeout", {"message": "reconnect"}))
    api = Api(stream, [task("running", progress=0.6, stage="denoise").model_dump(mode="json"),
                       task("succeeded").model_dump(mode="json")])
    result = api.run("--poll-interval", "0.01")
    assert result.exit_code == ExitCode.OK, result.output
    assert api.paths[:2] == ["/image", f"/tasks/{TASK_ID}/events"] and api.paths.count(f"/tasks/{TASK_ID}") == 2


def test_stream_parsing_skips_comments_and_joins_data_lines():
    lines = ["retry: 10", "", ": ping", "event: update", "data: {\"a\":", "data: 1}", "", "data: x", ""]
    assert [(e.event, e.data) for e in parse_events(lines)] == [("update", "{\"a\":\n1}"), ("message", "x")]
