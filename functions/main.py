"""Entry points for functions-framework: `api` (HTTP) and `ingest` (CloudEvent, Pub/Sub soul-requests).

The process builds its settings, clients and services once, on the first call, never at import time, so tests
and the emulators can point them anywhere first."""

from __future__ import annotations

import threading

import flask
import functions_framework
from cloudevents.http.event import CloudEvent

from functions._clients import make_clients
from functions.app import Api
from functions.ingest import handle_message
from functions.logs import configure_logging
from functions.settings import FunctionsSettings

_lock = threading.Lock()
_api: Api | None = None


def _get_api() -> Api:
    global _api
    with _lock:
        if _api is None:
            settings = FunctionsSettings()
            configure_logging(settings.log_level, component="functions")
            _api = Api(settings, make_clients(settings.project_id))
        return _api


@functions_framework.http
def api(request: flask.Request) -> flask.Response:
    return _get_api()(request)


def _route_static_paths_to_api() -> None:
    """Flask's built-in `/static/<path>` view would serve files from local disk and shadow the original app's
    `/static/...` paths, which must answer with signed-URL redirects. functions-framework executes this module
    inside its app context, so the view can be replaced by the API here."""
    if flask.has_app_context() and "static" in flask.current_app.view_functions:
        flask.current_app.view_functions["static"] = lambda filename: api(flask.request)


_route_static_paths_to_api()


@functions_framework.cloud_event
def ingest(event: CloudEvent) -> None:
    data = event.data if isinstance(event.data, dict) else {}
    message = data.get("message") or {}
    handle_message(_get_api().services, message, str(message.get("messageId") or event["id"]))
