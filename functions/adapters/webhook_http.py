"""Outbound webhook requests: a POST to the IP that functions/core/ssrf.py vetted (the hostname only in Host and
SNI, so a name cannot be rebound to an internal address between the check and the connection); no redirect is
followed, and only the status line is read, never the headers or the body.

The whole attempt (connect, TLS, sending, the status line) runs against one deadline: every socket operation
gets only the time that is left, so a receiver that drips a byte at a time cannot stretch an attempt past it
(a per-read timeout, as urllib3's, restarts with every byte)."""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Mapping

import certifi

from functions.core import ssrf

USER_AGENT = "soul-webhooks/1"
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] ([1-5][0-9]{2})(?: |\r?$)")
_MAX_STATUS_LINE = 1024  # bytes: a status line is "HTTP/1.1 200 OK"; more without a line end is not HTTP


class SendFailed(Exception):
    """The request did not get an answer (connection refused or reset, the deadline, a TLS failure): retry later."""


class _Deadline:
    def __init__(self, seconds: float):
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise SendFailed("the attempt ran past its deadline")
        return left


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def post(target: ssrf.Target, headers: Mapping[str, str], body: bytes, timeout_s: float) -> int:
    """POST to the vetted IP (the hostname only in Host and SNI) within `timeout_s` overall; the status code."""
    deadline = _Deadline(timeout_s)
    default_port = 443 if target.scheme == "https" else 80
    host = target.host if target.port == default_port else f"{target.host}:{target.port}"
    head = [f"POST {target.path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()
             if name.lower() not in ("host", "content-length", "connection")]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    try:
        sock = socket.create_connection((target.ip, target.port), timeout=min(3.0, deadline.left()))
        try:
            if target.scheme == "https":
                sock.settimeout(deadline.left())
                sock = _tls_context().wrap_socket(sock, server_hostname=target.host)
            view = memoryview(request)
            while view:
                sock.settimeout(deadline.left())
                sent = sock.send(view)
                view = view[sent:]
            return _read_status(sock, deadline)
        finally:
            sock.close()
    except SendFailed:
        raise
    except TimeoutError as exc:  # the last socket operation had only what was left of the deadline
        raise SendFailed(f"the attempt ran past its deadline ({timeout_s:g} s)") from exc
    except (OSError, ValueError) as exc:  # refused, reset, timeouts, TLS errors (ssl.SSLError is an OSError)
        raise SendFailed(f"{type(exc).__name__}: {str(exc)[:200]}") from exc


def _read_status(sock: socket.socket, deadline: _Deadline) -> int:
    line = b""
    while b"\n" not in line:
        if len(line) > _MAX_STATUS_LINE:
            raise SendFailed("the answer does not start with an HTTP status line")
        sock.settimeout(deadline.left())
        chunk = sock.recv(256)
        if not chunk:
            raise SendFailed("the connection closed before a status line")
        line += chunk
    match = _STATUS_LINE.match(line.split(b"\n", 1)[0])
    if match is None:
        raise SendFailed("the answer does not start with an HTTP status line")
    return int(match.group(1))
