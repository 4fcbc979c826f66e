"""The `soul` CLI's HTTP commands, run in-process with typer's CliRunner against a real HTTP server on 127.0.0.1
that answers with bodies built from the `schemas.api` contract models and records every request. The Pub/Sub
commands are tested against the emulator in tests/integration/test_cli_bus.py; the dead-letter rules, being
pure, are tested here."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from schemas.api import (
    ErrorBody,
    ErrorDetail,
    ImageQueued,
    ImageReady,
    Place,
    Task,
    TaskActions,
    TaskPage,
    TaskResult,
    Variant,
)
from schemas.jobs import JobError, JobRequested
from soul_cli import dead_letters, render
from soul_cli.bus import Received
from soul_cli.errors import ExitCode
from soul_cli.main import app

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
TASK_ID = "img-" + "a" * 32 + "-0"
PK = "b" * 32
URL = "https://storage.example/soul-local-media/images/nova/" + PK + "/01HXYZ.png?X-Goog-Signature=" + "f" * 64


# ---- the fake API: a real HTTP server with scripted answers -------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: object | None


Answer = tuple[int, object]  # status, body (a contract model, a JSON-able value, or raw bytes)


class FakeApi:
    """Answers each (method, path) with its scripted answers in turn (the last one repeats), or with a function of
    the request; anything unscripted is a 404 in the API's error shape."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: dict[tuple[str, str], list[Answer] | Callable[[Recorded], Answer]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.fake = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def on(self, method: str, path: str, *answers: Answer | Callable[[Recorded], Answer]) -> None:
        self._script[(method, path)] = answers[0] if callable(answers[0]) else list(answers)

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if (r.method, r.path) == (method, path)]

    def answer(self, request: Recorded) -> Answer:
        with self._lock:
            self.requests.append(request)
            script = self._script.get((request.method, request.path))
            if script is None:
                return 404, error_body("not_found", f"no endpoint {request.path}")
            if callable(script):
                return script(request)
            return script.pop(0) if len(script) > 1 else script[0]

    def __enter__(self) -> FakeApi:
        # A short poll interval: shutdown() waits for the loop to notice.
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def _serve(self) -> None:
        url = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = Recorded(
            method=self.command,
            path=url.path,
            query=dict(parse_qsl(url.query)),
            headers=dict(self.headers.items()),
            body=json.loads(raw) if raw else None,
        )
        status, body = self.server.fake.answer(request)  # type: ignore[attr-defined]
        if isinstance(body, bytes):
            payload, content_type = body, "text/html"
        else:
            payload = json.dumps(body.model_dump(mode="json") if isinstance(body, BaseModel) else body).encode()
            content_type = "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, *args: object) -> None:
        pass


# ---- contract bodies --------------------------------------------------------------------------------------------


def variant() -> Variant:
    return Variant(variant_id="01HXYZ0000000000000000000A", pk_id=PK, url=URL, expires_at=NOW + timedelta(hours=1),
                   width=64, height=64, seed=7, created_at=NOW)


def task(status: str = "queued", *, task_id: str = TASK_ID, progress: float = 0.0, stage: str = "queued",
         **fields: object) -> Task:
    if status == "succeeded":
        fields.setdefault("result", TaskResult(variant=variant()))
        progress, stage = 1.0, "done"
    return Task(task_id=task_id, type="image", status=status, progress=progress, stage=stage, eta_seconds=4.0,
                soul_id="nova", user_id="user123", created_at=NOW, actions=TaskActions(self=f"/tasks/{task_id}"),
                **fields)


def queued(task_id: str = TASK_ID, **fields: object) -> ImageQueued:
    return ImageQueued(status="queued", task_id=task_id, pk_id=PK, status_url=f"/tasks/{task_id}",
                       estimated_seconds=8.0, **fields)


def error_body(code: str, message: str, field: str | None = None) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(code=code, message=message, field=field))


# ---- running the CLI --------------------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi() as fake:
        yield fake


def soul(api: FakeApi, *args: str, env: dict[str, str | None] | None = None):
    """Runs `soul ARGS` against `api`, configured through the environment as a user would."""
    return CliRunner().invoke(app, list(args), env={"SOUL_API_URL": api.url, "SOUL_API_KEY": None, **(env or {})})


def assert_clean(result) -> None:
    """Failures end with an exit status and a message, never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


FAST = ("--poll-interval", "0.01")
TASK_PATH = f"/tasks/{TASK_ID}"


# ---- image and selfie -------------------------------------------------------------------------------------------


def test_a_ready_image_prints_its_url_at_once(api):
    api.on("GET", "/image", (200, ImageReady(pk_id=PK, variant=variant())))

    result = soul(api, "image", "nova", "penguin", "--user", "user123")

    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == URL + "\n"
    [call] = api.requests
    assert call.query == {"soul_id": "nova", "cue": "penguin", "user_id": "user123"}


def test_image_waits_for_a_queued_task_until_it_succeeds_and_prints_the_url(api):
    api.on("GET", "/image", (202, queued()))
    api.on("GET", TASK_PATH,
           (200, task("queued")),
           (200, task("running", progress=0.5, stage="denoising")),
           (200, task("succeeded")))

    result = soul(api, "image", "nova", "penguin", "--user", "user123", *FAST)

    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == URL + "\n"
    assert len(api.calls("GET", TASK_PATH)) == 3
    assert "running, denoising, 50%" in result.stderr  # the progress, as lines when stderr is not a terminal


def test_no_wait_prints_the_task_id_and_does_not_poll(api):
    api.on("GET", "/image", (202, queued()))

    result = soul(api, "image", "nova", "penguin", "--user", "user123", "--no-wait")

    assert result.exit_code == ExitCode.OK
    assert result.stdout == TASK_ID + "\n"
    assert f"soul task {TASK_ID}" in result.stderr
    assert not api.calls("GET", TASK_PATH)


def test_a_failed_task_exits_1_with_the_task_error(api):
    api.on("GET", "/image", (202, queued()))
    api.on("GET", TASK_PATH, (200, task("running", progress=0.2, stage="denoising")),
           (200, task("failed", stage="failed", error=JobError(type="RenderError", message="CUDA out of memory"))))

    result = soul(api, "image", "nova", "penguin", "--user", "user123", *FAST)

    assert result.exit_code == ExitCode.UNSUCCESSFUL
    assert result.stdout == ""
    assert f"error: task {TASK_ID} failed: RenderError: CUDA out of memory" in result.stderr
    assert_clean(result)


def test_a_withheld_image_exits_1_with_the_policys_reason(api):
    from schemas.safety import Withheld

    withheld = Withheld(variant_id="01ARZ3NDEKTSV4RRFFQ69G5FAV", policy="withhold", reason="flagged; policy withhold")
    api.on("GET", "/image", (202, queued()))
    api.on("GET", TASK_PATH, (200, task("succeeded", result=TaskResult(withheld=withheld))))

    result = soul(api, "image", "nova", "penguin", "--user", "user123", *FAST)

    assert result.exit_code == ExitCode.UNSUCCESSFUL and result.stdout == ""
    assert "is withheld: flagged; policy withhold" in result.stderr
    assert_clean(result)


def test_a_canceled_task_exits_1(api):
    api.on("GET", "/image", (202, queued()))
    api.on("GET", TASK_PATH, (200, task("canceled", stage="canceled", cancel_requested=True)))

    result = soul(api, "image", "nova", "penguin", "--user", "user123", *FAST)

    assert result.exit_code == ExitCode.UNSUCCESSFUL
    assert "was canceled" in result.stderr
    assert_clean(result)


def test_an_error_answer_exits_2_with_the_structured_message(api):
    api.on("GET", "/image", (400, error_body("invalid_argument", "cue must not be empty", "cue")))

    result = soul(api, "image", "nova", " ", "--user", "user123")

    assert result.exit_code == ExitCode.ERROR
    assert result.stdout == ""
    assert result.stderr == "error: cue must not be empty (field: cue) [invalid_argument, HTTP 400]\n"
    assert_clean(result)


def test_an_unknown_task_exits_2(api):
    result = soul(api, "task", "img-" + "c" * 32 + "-0")  # unscripted: the fake answers 404 in the error shape

    assert result.exit_code == ExitCode.ERROR
    assert "[not_found, HTTP 404]" in result.stderr
    assert_clean(result)


def test_an_error_answer_without_the_error_shape_is_reported_cleanly(api):
    api.on("GET", "/image", (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>"))

    result = soul(api, "image", "nova", "penguin", "--user", "user123")

    assert result.exit_code == ExitCode.ERROR
    assert "502 Bad Gateway" in result.stderr and "[http_502, HTTP 502]" in result.stderr
    assert_clean(result)


def test_an_answer_outside_the_contract_is_reported_not_half_printed(api):
    api.on("GET", TASK_PATH, (200, {"hello": "world"}))

    result = soul(api, "task", TASK_ID)

    assert result.exit_code == ExitCode.ERROR
    assert "is not a Task" in result.stderr
    assert_clean(result)


def test_polling_rides_out_a_503(api):
    api.on("GET", "/image", (202, queued()))
    api.on("GET", TASK_PATH, (503, error_body("unavailable", "a backing service is unavailable; retry later")),
           (200, task("succeeded")))

    result = soul(api, "image", "nova", "penguin", "--user", "user123", *FAST)

    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == URL + "\n"
    assert len(api.calls("GET", TASK_PATH)) == 2


def test_waiting_past_the_timeout_exits_3_and_says_how_to_follow(api):
    api.on("GET", "/image", (202, queued()))
    api.on("GET", TASK_PATH, (200, task("running", progress=0.1, stage="loading")))

    result = soul(api, "image", "nova", "penguin", "--user", "user123", "--timeout", "0.1", "--poll-interval", "0.02")

    assert result.exit_code == ExitCode.STILL_RUNNING
    assert f"task {TASK_ID} is running" in result.stderr and f"soul task {TASK_ID}" in result.stderr
    assert_clean(result)


def test_an_unreachable_api_exits_2(api):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    result = soul(api, "task", TASK_ID, env={"SOUL_API_URL": f"http://127.0.0.1:{port}"})

    assert result.exit_code == ExitCode.ERROR
    assert f"cannot reach the Soul API at http://127.0.0.1:{port}" in result.stderr
    assert_clean(result)


def test_selfie_posts_its_json_body_and_names_the_place(api):
    place = Place(key="eiffel_tower", name="Eiffel Tower", city_key="paris", city_name="Paris")
    api.on("POST", "/image/selfie", (202, queued(place=place)))
    api.on("GET", TASK_PATH, (200, task("succeeded")))

    result = soul(api, "selfie", "nova", "--city", "paris", "--mood", "happy", "--user", "user123", *FAST)

    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == URL + "\n"
    assert "place: Eiffel Tower, Paris" in result.stderr
    [post] = api.calls("POST", "/image/selfie")
    assert post.body == {"soul_id": "nova", "city_key": "paris", "mood": "happy", "user_id": "user123"}
    assert post.headers["Content-Type"] == "application/json"


# ---- auth -------------------------------------------------------------------------------------------------------


def test_the_api_key_is_sent_as_a_bearer_token_on_every_request(api):
    api.on("GET", "/image", (202, queued()))
    api.on("GET", TASK_PATH, (200, task("running", progress=0.5)), (200, task("succeeded")))

    result = soul(api, "image", "nova", "penguin", "--user", "user123", *FAST, env={"SOUL_API_KEY": "s3cret"})

    assert result.exit_code == ExitCode.OK, result.output
    assert len(api.requests) == 4  # /image, the event stream it tried first (404 here), two polls
    assert {r.headers.get("X-API-Key") for r in api.requests} == {"s3cret"}


def test_the_api_key_flag_wins_over_the_environment_and_no_key_sends_no_header(api):
    api.on("GET", TASK_PATH, (200, task("running")))

    soul(api, "--api-key", "from-flag", "task", TASK_ID, env={"SOUL_API_KEY": "from-env"})
    soul(api, "task", TASK_ID)

    assert [r.headers.get("X-API-Key") for r in api.requests] == ["from-flag", None]


# ---- tasks ------------------------------------------------------------------------------------------------------


def _paged(total: int, page_of: dict[str | None, tuple[int, int, str | None]]):
    """Answers GET /tasks by cursor: cursor -> (first index, count, next cursor)."""

    def answer(request: Recorded) -> Answer:
        first, count, next_cursor = page_of[request.query.get("cursor")]
        count = min(count, int(request.query["page_size"]))
        items = [task("succeeded", task_id=f"img-{'d' * 32}-{i}") for i in range(first, min(first + count, total))]
        return 200, TaskPage(items=items, next_cursor=next_cursor)

    return answer


PAGES = {None: (0, 2, "c1"), "c1": (2, 2, "c2"), "c2": (4, 2, None)}


def test_tasks_follows_next_cursor_until_the_limit(api):
    api.on("GET", "/tasks", _paged(6, PAGES))

    result = soul(api, "tasks", "--limit", "3", "--status", "succeeded", "--type", "image", "--soul", "nova",
                  "--user", "user123", "--json")

    assert result.exit_code == ExitCode.OK, result.output
    ids = [json.loads(line)["task_id"] for line in result.stdout.splitlines()]
    assert ids == [f"img-{'d' * 32}-{i}" for i in range(3)]
    calls = api.calls("GET", "/tasks")
    assert [(c.query.get("cursor"), c.query["page_size"]) for c in calls] == [(None, "3"), ("c1", "1")]
    for call in calls:
        assert call.query.items() >= {"status": "succeeded", "type": "image", "soul_id": "nova",
                                      "user_id": "user123"}.items()


def test_tasks_stops_at_the_last_page(api):
    api.on("GET", "/tasks", _paged(6, PAGES))

    result = soul(api, "tasks", "--limit", "50")

    assert result.exit_code == ExitCode.OK, result.output
    assert [c.query.get("cursor") for c in api.calls("GET", "/tasks")] == [None, "c1", "c2"]
    assert all(f"img-{'d' * 32}-{i}" in result.stdout for i in range(6))  # the table, ids unwrapped


def test_task_shows_a_table_or_the_json(api):
    failed = task("failed", stage="failed", error=JobError(type="RenderError", message="[gpu] out of memory"))
    api.on("GET", TASK_PATH, (200, failed))

    table = soul(api, "task", TASK_ID)
    raw = soul(api, "task", TASK_ID, "--json")

    assert table.exit_code == raw.exit_code == ExitCode.OK
    assert TASK_ID in table.stdout and "failed" in table.stdout
    assert "RenderError: [gpu] out of memory" in table.stdout  # brackets are text, not rich markup
    assert json.loads(raw.stdout) == failed.model_dump(mode="json")


def test_a_task_id_stays_one_path_segment(api):
    soul(api, "task", "../image")

    assert [r.path for r in api.requests] == ["/tasks/..%2Fimage"]


def test_cancel_sends_delete(api):
    api.on("DELETE", TASK_PATH, (200, task("canceled", stage="canceled", cancel_requested=True)))

    result = soul(api, "cancel", TASK_ID)

    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == f"canceled {TASK_ID}\n"
    assert [(r.method, r.path) for r in api.requests] == [("DELETE", TASK_PATH)]


def test_cancel_of_a_running_task_is_a_request(api):
    api.on("DELETE", TASK_PATH, (202, task("running", progress=0.4, cancel_requested=True)))

    result = soul(api, "cancel", TASK_ID)

    assert result.exit_code == ExitCode.OK
    assert result.stdout.startswith(f"cancel requested for {TASK_ID} (running)")


def test_cancel_of_a_finished_task_exits_2_with_the_conflict(api):
    message = f"task '{TASK_ID}' is already succeeded; only queued or running tasks can be canceled"
    api.on("DELETE", TASK_PATH, (409, error_body("conflict", message)))

    result = soul(api, "cancel", TASK_ID)

    assert result.exit_code == ExitCode.ERROR
    assert result.stderr == f"error: {message} [conflict, HTTP 409]\n"
    assert_clean(result)


def test_bad_usage_exits_2():
    result = CliRunner().invoke(app, ["image", "nova", "penguin"])  # no --user

    assert result.exit_code == ExitCode.ERROR
    assert "--user" in result.output


def test_python_dash_m_runs_the_same_app():
    done = subprocess.run([sys.executable, "-m", "soul_cli", "--help"], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "dead-letters" in done.stdout


# ---- pure rules -------------------------------------------------------------------------------------------------


def received(data: bytes, **attributes: str) -> Received:
    return Received(subscription="soul-jobs-dead-letter-sub", ack_id="ack-1", message_id="m-1", data=data,
                    attributes=attributes, publish_time=NOW, delivery_attempt=0)


def test_only_a_valid_job_requested_is_replayable():
    good = JobRequested(job_id=TASK_ID, type="image").model_dump_json().encode()

    assert dead_letters.inspect(received(good)).job == JobRequested(job_id=TASK_ID, type="image")
    not_json = dead_letters.inspect(received(b"{oops"))
    bad_id = dead_letters.inspect(received(b'{"schema_version": 1, "job_id": "job-1", "type": "image"}'))
    assert not not_json.replayable and not_json.problem.startswith("not a JobRequested: Invalid JSON")
    assert not bad_id.replayable and bad_id.problem.startswith("not a JobRequested: job_id: String should match")


def test_replay_drops_only_the_dead_letter_notes():
    attributes = {"job_id": TASK_ID, "type": "image", "schema_version": "1",
                  "soul-dead-letter-reason": "Firestore unavailable", "soul-dead-letter-at": "2024-05-01"}

    assert dead_letters.replay_attributes(attributes) == {"job_id": TASK_ID, "type": "image", "schema_version": "1"}


def test_event_lines_fall_back_to_the_publish_time():
    with_time = received(b'{"status": "succeeded"}', **{"ce-type": "soul.job.succeeded", "ce-id": TASK_ID,
                                                        "ce-time": "2024-05-01T12:00:05+00:00"})
    without = received(b"not json", **{"ce-type": "soul.job.canceled", "ce-id": TASK_ID})

    assert render.event_line(with_time) == f"2024-05-01T12:00:05+00:00  soul.job.succeeded  {TASK_ID}  succeeded"
    assert render.event_line(without) == f"2024-05-01T12:00:00+00:00  soul.job.canceled  {TASK_ID}  -"


@pytest.mark.parametrize(("seconds", "text"), [(None, "?"), (0.4, "0s"), (8.2, "8s"), (125, "2m05s")])
def test_eta_text(seconds, text):
    assert render.eta(seconds) == text
