"""Security headers of every answer of the `api` function, pages included: the pages (`/`, `/docs`) get a
Content-Security-Policy that allows only their own files and the signed-URL origin of the media they show and
save (no inline script or style, no framing, no other foreign connections); JSON answers get the strictest
policy. Policy as data: one table, one function."""

from __future__ import annotations

from functools import cache
from urllib.parse import urlsplit

import flask

PAGES = frozenset({"/", "/docs"})
DEFAULT_MEDIA_ORIGIN = "https://storage.googleapis.com"

COMMON = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


@cache
def page_csp(signed_url_endpoint: str | None) -> str:
    media = media_origin(signed_url_endpoint)
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' data: blob: {media}; media-src 'self' blob: {media}; connect-src 'self' {media}; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


def media_origin(signed_url_endpoint: str | None) -> str:
    """The origin signed URLs point at: the configured endpoint's (e.g. fake-gcs-server locally), else GCS."""
    if not signed_url_endpoint:
        return DEFAULT_MEDIA_ORIGIN
    parts = urlsplit(signed_url_endpoint)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else DEFAULT_MEDIA_ORIGIN


def add_security_headers(response: flask.Response, path: str, signed_url_endpoint: str | None) -> None:
    for name, value in COMMON.items():
        response.headers.setdefault(name, value)
    is_page = (path.rstrip("/") or "/") in PAGES
    response.headers["Content-Security-Policy"] = page_csp(signed_url_endpoint) if is_page else API_CSP
