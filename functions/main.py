"""Entry points for functions-framework: `api_async` (HTTP, the deployed api: ASGI, functions/http/asgi.py),
`api` (the same router as a WSGI function: in-process tests, any WSGI server), `ingest` (CloudEvent, Pub/Sub
soul-requests), `webhooks` (CloudEvent, Pub/Sub soul-events: webhook deliveries) and `reconcile`.

The process builds its settings, clients and services once, on the first call, never at import time, so tests
and the emulators can point them anywhere first."""

from __future__ import annotations

import logging
import threading

import asyncio

import flask
import functions_framework
import functions_framework.aio
from starlette.requests import Request as AsgiRequest
from starlette.responses import Response as AsgiResponse
from cloudevents.http.event import CloudEvent
from pydantic import ValidationError

from functions.adapters.clients import make_clients
from functions.core.tenants import ConfigError, build_key_ring
from functions.http import front
from functions.http.app import Api, structured_error
from functions.http.asgi import AsgiApi
from functions.services.ingest import handle_message
from functions.services.webhook_delivery import handle_event
from functions.settings import FunctionsSettings
from soul_common.logs import configure_logging

_lock = threading.Lock()
_api: Api | None = None
_asgi: AsgiApi | None = None
_asgi_lock = threading.Lock()


def _get_api() -> Api:
    global _api
    if _api is None:  # the lock is only for the first requests, racing to build it
        with _lock:
            if _api is None:
                settings = FunctionsSettings()
                configure_logging(settings.log_level, component="functions")
                keys = build_key_ring(settings.api_keys.get_secret_value(), settings.api_keys_file)  # before clients
                _api = Api(settings, make_clients(settings.project_id), keys)
    return _api


@functions_framework.http
def api(request: flask.Request) -> flask.Response:
    try:
        handler = _get_api()
    except ValidationError as exc:  # a deployment problem: say which setting, in the error shape, and log it
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        logging.getLogger(__name__).error("invalid configuration: %s", problems)
        return structured_error(500, f"the service is misconfigured: {problems}")
    except ConfigError as exc:  # the keys file or keys: same, the service does not start with them
        logging.getLogger(__name__).error("invalid configuration: %s", exc)
        return structured_error(500, f"the service is misconfigured: {exc}")
    return handler(request)


def _adapt_flask_app() -> None:
    """functions-framework executes this module inside its Flask app's context; two of Flask's defaults must go.

    Its built-in `/static/<path>` view would serve files from local disk and shadow the original app's
    `/static/...` paths, which answer with signed-URL redirects: the view is handed to the API. Its fixed
    `/favicon.ico` rule answers 404 (a console error on every page load): that path goes to the API too, before
    Flask dispatches, and so does every `OPTIONS` (Flask's automatic answer skips the API). And requests no
    Flask rule matches (e.g. a path with an encoded newline) would get Flask's HTML error pages: they get the
    API's structured error instead."""
    if not flask.has_app_context():
        return
    app = flask.current_app
    if "static" in app.view_functions:
        app.view_functions["static"] = lambda filename: api(flask.request)
    # OPTIONS too: Flask would answer it itself (200, an HTML-less empty body without the API's headers).
    app.before_request(lambda: api(flask.request) if flask.request.path == "/favicon.ico"
                       or flask.request.method == "OPTIONS" else None)
    for status in (400, 404, 405):
        app.register_error_handler(status, lambda exc: structured_error(exc.code, exc.description))


_adapt_flask_app()
front.install()  # errors gunicorn answers before the app (bad header byte, 431) get the error shape too


def _build_asgi() -> AsgiApi:
    global _asgi
    if _asgi is None:
        with _asgi_lock:
            if _asgi is None:
                try:
                    settings = _get_api().settings
                except (ValidationError, ConfigError):  # `api` answers the configuration error on each request
                    settings = FunctionsSettings.model_construct()
                _asgi = AsgiApi(api, settings)
    return _asgi


class _Delegate(AsgiResponse):
    """A Starlette response that hands the whole exchange (body read, answer, stream) to `AsgiApi`."""

    def __init__(self, app):
        self._app = app

    async def __call__(self, scope, receive, send) -> None:
        await self._app(scope, receive, send)


async def _served(scope, receive, send) -> None:
    app = _asgi if _asgi is not None else await asyncio.get_running_loop().run_in_executor(None, _build_asgi)
    await app(scope, receive, send)


@functions_framework.aio.http
async def api_async(request: AsgiRequest) -> AsgiResponse:
    """The deployed api: the router on a thread pool, event streams on the event loop (no thread each)."""
    return _Delegate(_served)


def _header_timeout_s() -> float:
    try:
        return FunctionsSettings().header_timeout_s
    except (ValidationError, ConfigError):  # `api` answers the configuration error on each request
        return front.HEADER_TIMEOUT_S


# The ASGI server's head deadline and limits; /favicon.ico and /robots.txt reach the api there too.
front.install_asgi(detour=_served, header_timeout_s=_header_timeout_s())


@functions_framework.cloud_event
def ingest(event: CloudEvent) -> None:
    data = event.data if isinstance(event.data, dict) else {}
    message = data.get("message") or {}
    handle_message(_get_api().services, message, str(message.get("messageId") or event["id"]))


@functions_framework.http
def reconcile(request: flask.Request) -> flask.Response:
    """Cloud Scheduler's target (every minute): one reconciler pass, the same code the runners run
    (soul_common.reconciler), so jobs are brought to an end even while no runner is up."""
    from soul_common import reconcile_function

    try:
        report = reconcile_function.run_pass()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        return structured_error(500, f"the reconciler is misconfigured: {problems}")
    if report is None:
        # Not a failure for Cloud Scheduler: a runner (or another instance) holds this period's pass.
        return flask.jsonify({"status": "skipped", "detail": "the deployment's reconciler pass is held elsewhere"})
    return flask.jsonify({"status": "ok", **report.to_json()})


@functions_framework.cloud_event
def webhooks(event: CloudEvent) -> None:
    data = event.data if isinstance(event.data, dict) else {}
    handle_event(_get_api().services, data.get("message") or {})
