"""The deployed api front (`api_async`: functions/http/asgi.py around the router) driven in-process, as uvicorn
drives it: the router outside any Flask app context, the body read by the front. What the suite's WSGI test
clients cannot show: answers that need an app context (the signed-URL redirects answered 500 here), and what the
front does before the router sees a request (uploads read only once their key and role are admitted, a declared
length past the limit refused before a byte is read, a bound on the upload bytes held at once)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from google.cloud import firestore
from werkzeug.datastructures import Headers

from functions.http.asgi import AsgiApi
from schemas.ids import new_ulid
from tests.integration.test_api_surface import seed_variants
from tests.integration.test_security import H_ACME, H_ADMIN, make_api
from tests.support import api_client_with

MIB = 1024 * 1024


@dataclass
class Answer:
    status_code: int
    headers: Headers
    data: bytes


@dataclass
class Body:
    """A request body the front pulls chunk by chunk; `taken` counts the chunks it pulled."""

    chunks: list[bytes] = field(default_factory=list)
    taken: int = 0
    gate: asyncio.Event | None = None  # the last chunk waits for it (an upload still arriving)

    async def receive(self) -> dict:
        if self.gate is not None and self.taken == len(self.chunks) - 1:
            await self.gate.wait()
        if self.taken >= len(self.chunks):
            await asyncio.Event().wait()  # the client waits for the answer; it never disconnects first
        chunk = self.chunks[self.taken]
        self.taken += 1
        return {"type": "http.request", "body": chunk, "more_body": self.taken < len(self.chunks)}


async def call(app: AsgiApi, method: str, path: str, headers: dict[str, str] | None = None,
               body: Body | None = None) -> Answer:
    body = body or Body([b""])
    scope = {"type": "http", "http_version": "1.1", "method": method, "scheme": "http", "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080)}
    start: dict = {}
    parts: list[bytes] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            parts.append(message.get("body", b""))

    await app(scope, body.receive, send)
    return Answer(start["status"], Headers([(k.decode(), v.decode()) for k, v in start["headers"]]), b"".join(parts))


def run(app: AsgiApi, method: str, path: str, headers: dict[str, str] | None = None,
        body: Body | None = None) -> Answer:
    return asyncio.run(call(app, method, path, headers, body))


def upload(size: int, chunk: int = MIB, **extra: str) -> tuple[dict[str, str], Body]:
    """Headers and body of a reference upload of `size` bytes, sent in `chunk`-sized parts."""
    pieces = [b"x" * min(chunk, size - start) for start in range(0, size, chunk)]
    return {"content-type": "application/octet-stream", "content-length": str(size), **extra}, Body(pieces)


@pytest.fixture(scope="module")
def db(emulator_stack):
    return firestore.Client(project=os.environ["GCS_PROJECT_ID"])


@pytest.fixture
def open_front(emulator_stack, monkeypatch, clean_firestore, clean_bucket) -> Iterator[tuple[AsgiApi, object]]:
    """The front around an api without keys (local mode), and a WSGI test client of the same router."""
    monkeypatch.delenv("SOUL_API_KEYS", raising=False)
    monkeypatch.delenv("SOUL_API_KEYS_FILE", raising=False)
    api, client = api_client_with(monkeypatch, "front-open")
    yield AsgiApi(api, api.settings), client


@pytest.fixture
def keyed_front(emulator_stack, monkeypatch, tmp_path, clean_firestore) -> AsgiApi:
    """The front around an api with tenant keys (acme client and admin, globex), uploads budgeted at 3 MiB."""
    _, api = make_api(monkeypatch, tmp_path, SOUL_MAX_BUFFERED_UPLOAD_BYTES=str(3 * MIB))
    return AsgiApi(api, api.settings)


def test_signed_url_redirects_answer_302_through_the_deployed_front(open_front, db):
    front, client = open_front
    [variant_id] = seed_variants(db, 1)
    for prefix in ("/static/image/", "/generated/"):
        answer = run(front, "GET", f"{prefix}{variant_id}.png")
        assert answer.status_code == 302, answer.data
        assert "X-Goog-Signature" in answer.headers["Location"]
        assert answer.headers["Cache-Control"] == "private, no-store"
    # Both fronts answer every kind of route alike (pages, probes, listings, redirects, misses).
    for path in ("/healthz", "/tasks", "/static/images", f"/static/image/{variant_id}.png",
                 f"/static/image/{new_ulid()}.png", "/static/videos/vid-" + "0" * 32 + "-0.gif",
                 "/style/nova", "/openapi.json", "/docs", "/no/such/path"):
        assert run(front, "GET", path).status_code == client.get(path).status_code, path


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (H_ACME, 403)])
def test_an_upload_is_refused_from_its_head_before_its_body_is_read(keyed_front, headers, status):
    """No key, or a client key on an admin endpoint: refused before one byte of the 30 MiB body is taken."""
    head, body = upload(30 * MIB, **headers)
    answer = run(keyed_front, "POST", "/style/nova/references", head, body)
    assert answer.status_code == status and b'"error"' in answer.data
    assert body.taken == 0 and answer.headers["connection"] == "close"


def test_an_admitted_upload_is_read_and_judged_by_the_router(keyed_front):
    head, body = upload(2 * MIB, **H_ADMIN)
    answer = run(keyed_front, "POST", "/style/nova/references", head, body)
    assert body.taken == 2  # the whole body reached the router, which judges its content type
    assert answer.status_code == 415 and b"unsupported_media_type" in answer.data


@pytest.mark.parametrize(("path", "declared"), [("/image", 99_999_999_999), ("/image", 64 * 1024 + 1),
                                                ("/style/nova/references", 32 * MIB + 1)])
def test_a_declared_length_past_the_limit_is_413_before_any_byte_is_read(keyed_front, path, declared):
    head = {**H_ADMIN, "content-type": "application/json", "content-length": str(declared)}
    body = Body([b"{}"])
    answer = run(keyed_front, "POST", path, head, body)
    assert answer.status_code == 413 and b"payload_too_large" in answer.data
    assert body.taken == 0 and answer.headers["connection"] == "close"


def test_uploads_past_the_process_budget_are_503_until_one_ends(keyed_front):
    """Budget 3 MiB: a 2 MiB upload still arriving holds its share; a second is turned away at once with
    Retry-After (its body untouched); once the first has its answer, the next is read."""

    async def scenario() -> tuple[Answer, Answer, Answer, Body]:
        head, slow = upload(2 * MIB, **H_ADMIN)
        slow.gate = asyncio.Event()
        first = asyncio.ensure_future(call(keyed_front, "POST", "/style/nova/references", head, slow))
        while slow.taken == 0:  # the first upload is admitted and being read
            await asyncio.sleep(0.01)
        head2, second_body = upload(2 * MIB, **H_ADMIN)
        second = await call(keyed_front, "POST", "/style/nova/references", head2, second_body)
        assert second_body.taken == 0
        slow.gate.set()
        done = await first
        head3, third_body = upload(2 * MIB, **H_ADMIN)
        third = await call(keyed_front, "POST", "/style/nova/references", head3, third_body)
        return done, second, third, third_body

    done, second, third, third_body = asyncio.run(scenario())
    assert done.status_code == 415
    assert second.status_code == 503 and second.headers["Retry-After"] == "1" and b'"unavailable"' in second.data
    assert third.status_code == 415 and third_body.taken == 2
