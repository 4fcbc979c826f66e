"""Entry points for functions-framework: `api` (HTTP) and `ingest` (CloudEvent, Pub/Sub soul-requests).

The process builds its settings, clients and services once, on the first call, never at import time, so tests
and the emulators can point them anywhere first."""

from __future__ import annotations

import logging
import threading

import flask
import functions_framework
from cloudevents.http.event import CloudEvent
from pydantic import ValidationError

from functions._clients import make_clients
from functions.app import Api, structured_error
from functions.ingest import handle_message
from functions.logs import configure_logging
from functions.settings import FunctionsSettings

_lock = threading.Lock()
_api: Api | None = None


def _get_api() -> Api:
    global _api
    if _api is None:  # the lock is only for the first requests, racing to build it
        with _lock:
            if _api is None:
                settings = FunctionsSettings()
                configure_logging(settings.log_level, component="functions")
                _api = Api(settings, make_clients(settings.project_id))
    return _api


@functions_framework.http
def api(request: flask.Request) -> flask.Response:
    try:
        handler = _get_api()
    except ValidationError as exc:  # a deployment problem: say which setting, in the error shape, and log it
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        logging.getLogger(__name__).error("invalid configuration: %s", problems)
        return structured_error(500, f"the service is misconfigured: {problems}")
    return handler(request)


def _adapt_flask_app() -> None:
    """functions-framework executes this module inside its Flask app's context; two of Flask's defaults must go.

    Its built-in `/static/<path>` view would serve files from local disk and shadow the original app's
    `/static/...` paths, which answer with signed-URL redirects: the view is handed to the API. Its fixed
    `/favicon.ico` rule answers 404 (a console error on every page load): that path goes to the API too, before
    Flask dispatches. And requests no
    Flask rule matches (e.g. a path with an encoded newline) would get Flask's HTML error pages: they get the
    API's structured error instead."""
    if not flask.has_app_context():
        return
    app = flask.current_app
    if "static" in app.view_functions:
        app.view_functions["static"] = lambda filename: api(flask.request)
    app.before_request(lambda: api(flask.request) if flask.request.path == "/favicon.ico" else None)
    for status in (400, 404, 405):
        app.register_error_handler(status, lambda exc: structured_error(exc.code, exc.description))


_adapt_flask_app()


@functions_framework.cloud_event
def ingest(event: CloudEvent) -> None:
    data = event.data if isinstance(event.data, dict) else {}
    message = data.get("message") or {}
    handle_message(_get_api().services, message, str(message.get("messageId") or event["id"]))
