"""The HTTP server in front of the app, before it sees a request: its limits and its error shape.

gunicorn (which functions-framework runs for WSGI targets) answers a bad header byte, an over-long header (431),
a bad request line or a broken chunked body itself, with an HTML page: `install()` replaces that one writer so
those answers are the same `{"error": {"code", "message", "field"}}` JSON with the same security headers as
every other answer.

The deployed api (`api_async`, ASGI: uvicorn's h11 protocol under gunicorn) gets `GuardedH11Protocol`: a
connection must deliver its request line and headers within `header_timeout_s` (408, then closed: a half-open
connection holds a socket for that long and never a thread), a request line longer than `MAX_REQUEST_LINE` is a
414 and a header line longer than `MAX_HEADER_LINE` or a head larger than `MAX_HEAD` a 431, each refused as soon
as the bytes that break the limit arrive (counted, never parsed: an 8 MiB request line costs the same as 8 KiB);
an idle keep-alive connection is closed after `KEEPALIVE_S`. Limits as data, here only."""

from __future__ import annotations

import json

from functions.http.headers import API_CSP, COMMON

# gunicorn's statuses -> the API's stable error codes.
CODES = {400: "invalid_argument", 403: "permission_denied", 408: "request_timeout", 414: "uri_too_long",
         417: "expectation_failed", 431: "request_header_fields_too_large", 500: "internal"}

HEADER_TIMEOUT_S = 10.0  # request line + headers must arrive within this, from the connection or the last answer
#                          (the default of `header_timeout_s` in functions/settings.py, SOUL_HEADER_TIMEOUT_S)
KEEPALIVE_S = 5.0  # an idle keep-alive connection is closed after this
MAX_REQUEST_LINE = 8190  # bytes (gunicorn's default bound, which functions-framework turns off)
MAX_HEADER_LINE = 8190
MAX_HEAD = 32 * 1024  # request line and every header together


def error_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response in the error shape, closing the connection (the request was unreadable)."""
    text = message or reason
    if status >= 500:
        text = "internal error before the request reached the service"
    body = json.dumps({"error": {"code": CODES.get(status, "invalid_argument" if status < 500 else "internal"),
                                 "message": text[:500], "field": None}}).encode()
    headers = {"Connection": "close", "Content-Type": "application/json", "Content-Length": str(len(body)),
               "Content-Security-Policy": API_CSP, **COMMON}
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1", "replace") + body


def _write_error(sock, status_int: int, reason: str, mesg: str) -> None:
    from gunicorn import util

    util.write_nonblock(sock, error_response(int(status_int), str(reason), str(mesg)))


def install() -> bool:
    """Route gunicorn's pre-app errors through `error_response`; False where gunicorn is not in use."""
    try:
        from gunicorn import util
    except ImportError:
        return False
    util.write_error = _write_error
    return True


# Paths functions-framework's ASGI app answers itself with a plain-text 404 (its Flask app hands them to us).
RESERVED_PATHS = frozenset({"/favicon.ico", "/robots.txt"})
# The methods its routes take; it answers any other (and a target that is not a path: `*`, `http://host/...`)
# with a plain-text 405 or 404. Those go to the api too, to be answered in the error shape with one `Allow` list.
ROUTED_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"})


def detoured(scope: dict) -> bool:
    """Whether a request goes straight to the api rather than through functions-framework's routes."""
    path = scope.get("path", "")
    return path in RESERVED_PATHS or scope.get("method") not in ROUTED_METHODS or not path.startswith("/")


def _guarded_protocol(detour, header_timeout_s: float = HEADER_TIMEOUT_S):
    """`GuardedH11Protocol`, built on uvicorn's h11 protocol (imported only where uvicorn serves); requests for
    `RESERVED_PATHS` (and the requests `detoured` names) go straight to the ASGI app `detour` when one is
    given."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol with a header-read deadline and counted head limits (module docstring)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            if detour is not None:
                served = self.app

                async def app(scope, receive, send):
                    target = detour if scope.get("type") == "http" and detoured(scope) else served
                    await target(scope, receive, send)

                self.app = app

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head()

        def _arm_head(self) -> None:
            self._head_bytes = self._line_bytes = 0
            self._first_line = True
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _disarm_head(self) -> None:
            timer, self._head_timer = getattr(self, "_head_timer", None), None
            if timer is not None:
                timer.cancel()

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._refuse(408, "Request Timeout",
                             f"the request line and headers did not arrive within {header_timeout_s:g} s")

        def _refuse(self, status: int, reason: str, message: str) -> None:
            self._disarm_head()
            self.transport.write(error_response(status, reason, message))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is not None and self.conn.their_state is h11.IDLE and self._over_limit(data):
                return
            super().data_received(data)
            if self._head_timer is not None and self.conn.their_state is not h11.IDLE:
                self._disarm_head()  # the head is complete: the body's pace is the app's to bound

        def _over_limit(self, data: bytes) -> bool:
            """Count the head's bytes and line lengths; refuse (and say True) when a limit breaks. Counting stops
            at the blank line that ends the head: what follows it in the same read is the body's (a client that
            sends head and body at once, or a busy server reading both in one go, is no header overflow)."""
            start = 0
            while True:
                end = data.find(b"\n", start)
                taken = (len(data) if end < 0 else end + 1) - start
                self._head_bytes += taken
                self._line_bytes += (len(data) if end < 0 else end) - start
                line_limit = MAX_REQUEST_LINE if self._first_line else MAX_HEADER_LINE
                if self._line_bytes > line_limit:
                    if self._first_line:
                        self._refuse(414, "URI Too Long", f"the request line exceeds {MAX_REQUEST_LINE} bytes")
                    else:
                        self._refuse(431, "Request Header Fields Too Large",
                                     f"a header line exceeds {MAX_HEADER_LINE} bytes")
                    return True
                if self._head_bytes > MAX_HEAD + MAX_REQUEST_LINE:
                    self._refuse(431, "Request Header Fields Too Large", f"the headers exceed {MAX_HEAD} bytes")
                    return True
                if end < 0:
                    return False
                blank = self._line_bytes <= 1  # "\r\n" or "\n"
                if not self._first_line and blank:
                    return False  # the head is complete; h11 takes the rest as the body
                if not blank:  # blank lines before a request line do not count
                    self._first_line = False
                self._line_bytes, start = 0, end + 1

        def send_400_response(self, msg: str) -> None:
            self._refuse(400, "Bad Request", msg)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._disarm_head()
                self._arm_head()  # the next request's head has the same deadline

        def connection_lost(self, exc) -> None:
            self._disarm_head()
            super().connection_lost(exc)

    return GuardedH11Protocol


def install_asgi(detour=None, header_timeout_s: float = HEADER_TIMEOUT_S) -> bool:
    """Serve ASGI targets (uvicorn workers under gunicorn, as functions-framework runs them) with
    `GuardedH11Protocol` and the keep-alive bound; False where uvicorn's gunicorn worker is not installed.
    `detour`: the ASGI app that answers `RESERVED_PATHS`."""
    try:
        from uvicorn_worker import UvicornWorker
    except ImportError:
        return False
    UvicornWorker.CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "loop": "asyncio", "http": _guarded_protocol(detour, header_timeout_s),
                                   "timeout_keep_alive": KEEPALIVE_S, "server_header": False,
                                   # The peer address stays the peer's: uvicorn would take X-Forwarded-For from
                                   # a local peer; the api reads it itself, only as far as SOUL_TRUSTED_PROXY_HOPS.
                                   "proxy_headers": False,
                                   # h11's own bound stays above ours, so ours answers first, in the error shape
                                   "h11_max_incomplete_event_size": 2 * (MAX_HEAD + MAX_REQUEST_LINE)}
    return True
