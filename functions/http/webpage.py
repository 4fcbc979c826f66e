"""The web page and its static files (script modules, stylesheet, icons), served from package data.

Why a module of its own: the page is the one part of the `api` function that serves files. A request names a
file only through a key of `ASSETS` (an allow-list matched exactly), so no caller-given path ever reaches the
filesystem. Content types and cache headers are policy as data here; the bytes are read once per process."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import flask

# Public name -> (file under functions/data/, content type). Nothing else is served.
ASSETS: dict[str, tuple[str, str]] = {
    "app.js": ("ui/app.js", "text/javascript; charset=utf-8"),
    "api.js": ("ui/api.js", "text/javascript; charset=utf-8"),
    "follow.js": ("ui/follow.js", "text/javascript; charset=utf-8"),
    "state.js": ("ui/state.js", "text/javascript; charset=utf-8"),
    "views.js": ("ui/views.js", "text/javascript; charset=utf-8"),
    "docs.js": ("ui/docs.js", "text/javascript; charset=utf-8"),
    "app.css": ("ui/app.css", "text/css; charset=utf-8"),
    "docs.css": ("ui/docs.css", "text/css; charset=utf-8"),
    "favicon.svg": ("ui/favicon.svg", "image/svg+xml"),
    "favicon.ico": ("ui/favicon.ico", "image/x-icon"),
}
PAGES: dict[str, tuple[str, str]] = {
    "web": ("index.html", "text/html; charset=utf-8"),
    "docs": ("docs.html", "text/html; charset=utf-8"),
}
# Names are not content-hashed, so a browser revalidates every time (cheap: 304 on a matching ETag).
CACHE_CONTROL = "no-cache"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


@cache
def _load(filename: str, content_type: str) -> StaticFile:
    body = resources.files("functions").joinpath(f"data/{filename}").read_bytes()
    return StaticFile(body=body, content_type=content_type, etag=hashlib.sha256(body).hexdigest()[:32])


def asset(name: str) -> StaticFile | None:
    """The allow-listed file called `name`, or None (the caller answers 404)."""
    entry = ASSETS.get(name)
    return _load(*entry) if entry else None


def page(name: str) -> StaticFile:
    return _load(*PAGES[name])


def respond(request: flask.Request, file: StaticFile) -> flask.Response:
    """The file with its type, a strong ETag and revalidation; 304 when the browser's copy is current."""
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": f'"{file.etag}"', "X-Content-Type-Options": "nosniff"}
    if file.etag in request.if_none_match:
        return flask.Response(status=304, headers=headers)
    return flask.Response(file.body, content_type=file.content_type, headers=headers)
