"""Outbound webhook requests: a POST to the IP that functions/core/ssrf.py vetted (the hostname only in Host and
SNI, so a name cannot be rebound to an internal address between the check and the connection); no redirect is
followed, the timeouts are short, and only the status code is read, never the body."""

from __future__ import annotations

from collections.abc import Mapping

import certifi
import urllib3

from functions.core import ssrf

USER_AGENT = "soul-webhooks/1"


class SendFailed(Exception):
    """The request did not get an answer (connection refused or reset, a timeout, a TLS failure): retry later."""


def post(target: ssrf.Target, headers: Mapping[str, str], body: bytes, timeout_s: float) -> int:
    """POST to the vetted IP (the hostname only in Host and SNI); the status code, never the body."""
    timeout = urllib3.Timeout(connect=min(3.0, timeout_s), read=timeout_s)
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            target.ip, target.port, timeout=timeout, retries=False, maxsize=1, server_hostname=target.host,
            assert_hostname=target.host, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where(),
        )
    else:
        pool = urllib3.HTTPConnectionPool(target.ip, target.port, timeout=timeout, retries=False, maxsize=1)
    default_port = 443 if target.scheme == "https" else 80
    host = target.host if target.port == default_port else f"{target.host}:{target.port}"
    try:
        with pool:
            response = pool.urlopen("POST", target.path, body=body, headers={**headers, "Host": host},
                                    redirect=False, retries=False, preload_content=False, assert_same_host=False)
            response.release_conn()
            return response.status
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise SendFailed(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
