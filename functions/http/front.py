"""The error shape for errors the HTTP server raises before the app sees the request: gunicorn (which
functions-framework runs) answers a bad header byte, an over-long header (431), a bad request line or a broken
chunked body itself, with an HTML page. This module replaces that one writer so those answers are the same
`{"error": {"code", "message", "field"}}` JSON with the same security headers as every other answer."""

from __future__ import annotations

import json

from functions.http.headers import API_CSP, COMMON

# gunicorn's statuses -> the API's stable error codes.
CODES = {400: "invalid_argument", 403: "permission_denied", 414: "uri_too_long", 417: "expectation_failed",
         431: "request_header_fields_too_large", 500: "internal"}


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
