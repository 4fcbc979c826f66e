"""The deployed front of the `api` function (`api_async` in functions/main.py, served by functions-framework's
ASGI mode: uvicorn under gunicorn): one event loop owns every connection, the synchronous router
(functions/http/app.py) runs on a bounded pool of threads, and event streams are sent from the loop, so a
waiting stream holds no thread and a thousand followers leave the threads to everyone else.

Per request: the body is read here, before any thread is taken, and at most `max_body_bytes` + 1 bytes of it
(`max_upload_body_bytes` for the identity uploads), chunked or not (413, the connection closed; a declared
`Content-Length` past the limit is the same 413 before any byte is read); a body that stalls for
`body_idle_timeout_s` between two reads is a 408. An upload's body is read only once the router has admitted its
head (the key, its role: `PREFLIGHT`), and while the uploads in memory stay under `max_buffered_upload_bytes`
(else 503 with Retry-After): no anonymous caller makes the process hold 32 MiB, and no number of callers more than
the budget. The request then becomes a WSGI environ for the router; its answer goes back as it is, except a body that
is an `EventStream`, which is iterated asynchronously until it ends or the client leaves."""

from __future__ import annotations

import asyncio
import contextvars
import io
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from functions.core import errors
from functions.http.app import PREFLIGHT, PREFLIGHT_ADMITTED, error_response
from functions.http.routes import ENDPOINTS
from functions.http.sse import EventStream
from functions.settings import FunctionsSettings

Handler = Callable[[flask.Request], flask.Response]

# The router's threads and the event loop share one GIL: while the loop wakes a thousand followers, a router
# thread waiting for the GIL waits up to the switch interval at each hand-off (5 ms by default). A shorter interval
# keeps a dedup hit's tail latency near its no-follower figure (BENCHMARKS.md, "Live progress for thousands").
SWITCH_INTERVAL_S = 0.001


class AsgiApi:
    """An ASGI application around the WSGI router `handler`; built once per process."""

    def __init__(self, handler: Handler, settings: FunctionsSettings):
        self._handler = handler
        self._limit = settings.max_body_bytes
        self._upload_limit = settings.max_upload_body_bytes
        # The identity uploads (`upload` in the endpoint table) take larger bodies than every other endpoint.
        self._uploads = Map([Rule(ep.rule, endpoint=ep.name, methods=[ep.method]) for ep in ENDPOINTS if ep.upload],
                            strict_slashes=False).bind("localhost")
        self._idle = settings.body_idle_timeout_s
        self._upload_budget = settings.max_buffered_upload_bytes
        self._buffered = 0  # upload bytes reserved by requests in flight (only the event loop touches it)
        self._pool = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="api")
        sys.setswitchinterval(SWITCH_INTERVAL_S)  # this process serves the api and nothing else

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        limit = self._limit_for(scope)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _send_plain(send, error_response(errors.PayloadTooLarge(f"the body exceeds {limit} bytes")),
                              close=True)
            return
        if limit <= self._limit:
            await self._serve(scope, receive, send, limit)
            return
        # An upload: its head is judged before its body is read, and its body must fit in the process's budget.
        status, headers, chunks, _ = await self._in_pool(wsgi_environ(scope, b"", preflight=True))
        if status != PREFLIGHT_ADMITTED:
            await send({"type": "http.response.start", "status": status,
                        "headers": [*headers, (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": b"".join(chunks)})
            return
        reserve = declared if declared is not None else limit
        if self._buffered + reserve > self._upload_budget:
            busy = errors.Unavailable("too many uploads in progress; retry shortly", headers={"Retry-After": "1"})
            await _send_plain(send, error_response(busy), close=True)
            return
        self._buffered += reserve
        try:
            await self._serve(scope, receive, send, limit)
        finally:
            self._buffered -= reserve

    async def _serve(self, scope: dict, receive: Callable, send: Callable, limit: int) -> None:
        try:
            body = await self._read_body(receive, limit)
        except errors.SoulError as exc:
            await _send_plain(send, error_response(exc), close=True)
            return
        if body is None:  # the client left before its body arrived
            return
        environ = wsgi_environ(scope, body)
        status, headers, chunks, stream = await self._in_pool(environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if stream is None:
            await send({"type": "http.response.body", "body": b"".join(chunks)})
            return
        await _send_stream(stream, send, receive)

    async def _in_pool(self, environ: dict) -> tuple[int, list, list[bytes], EventStream | None]:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, context.run, self._run, environ)

    def _limit_for(self, scope: dict) -> int:
        try:
            self._uploads.match(scope["path"], method=scope["method"])
        except HTTPException:
            return self._limit
        return self._upload_limit

    async def _read_body(self, receive: Callable, limit: int) -> bytes | None:
        """The whole body, never more than `limit` + 1 bytes of it; None on a disconnect."""
        parts, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self._idle)
            except TimeoutError:
                raise errors.RequestTimeout(f"the body stalled for {self._idle:g} s; send it at once") from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise errors.PayloadTooLarge(f"the body exceeds {limit} bytes")
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _run(self, environ: dict) -> tuple[int, list, list[bytes], EventStream | None]:
        """On a pool thread: the router's answer as status, headers and either its body or its event stream."""
        response = self._handler(flask.Request(environ))
        headers = [(k.encode("latin-1"), v.encode("latin-1"))
                   for k, v in response.get_wsgi_headers(environ).to_wsgi_list()]
        if isinstance(response.response, EventStream) and environ["REQUEST_METHOD"] != "HEAD":
            return response.status_code, headers, [], response.response
        app_iter = response.get_app_iter(environ)
        try:
            chunks = list(app_iter)
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
        return response.status_code, headers, chunks, None


async def _send_stream(stream: EventStream, send: Callable, receive: Callable) -> None:
    """Send the stream's frames until it ends or the client disconnects; its slot is given back either way."""

    async def pump() -> None:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(disconnected())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stream.close()


async def _send_plain(send: Callable, response: flask.Response, *, close: bool) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.to_wsgi_list()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.get_data()})


def _declared_length(scope: dict) -> int | None:
    """The request's `Content-Length`, when it declares one (h11 has refused a malformed or repeated one)."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


def wsgi_environ(scope: dict, body: bytes, *, preflight: bool = False) -> dict:
    """The WSGI environ (PEP 3333) of an ASGI HTTP request whose body has been read (or, with `preflight`, of its
    head alone, for the router to admit). Header names with an underscore are dropped (as gunicorn does):
    `X_Api_Key` must never pass for `X-Api-Key`."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        PREFLIGHT: preflight,
    }
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1")
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # the body is read: its length is what arrived
        if key != "CONTENT_TYPE":
            key = f"HTTP_{key}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
