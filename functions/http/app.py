"""The `api` HTTP function's router: matches the endpoint table (`routes.py`), authenticates, parses path,
query and body into schemas/ models, applies Idempotency-Key, and turns every failure into the one error shape
`{"error": {"code", "message", "field"}}`. Nothing else reaches the wire: no stack trace, no HTML error page."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qsl

import flask
import structlog
from google.api_core import exceptions as gexc
from pydantic import BaseModel
from werkzeug.exceptions import MethodNotAllowed as WzMethodNotAllowed
from werkzeug.exceptions import NotFound as WzNotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Response as WzResponse

from functions.adapters.clients import Clients
from functions.core import errors
from functions.core.tenants import LOCAL, KeyRing, Principal
from functions.core.validation import parse, parse_json
from functions.http import webpage
from functions.http.auth import authenticate_key, platform_principal
from functions.http.auth_throttle import FailedAuthLimiter, source_of
from functions.http.headers import add_security_headers
from functions.http.openapi import openapi_document
from functions.http.uploads import read_upload
from functions.http.routes import ENDPOINTS, Call, Endpoint
from functions.services.idempotency import StoredReply, request_fingerprint
from functions.settings import FunctionsSettings
from functions.wiring import build_services
from schemas.api import ErrorBody, ErrorDetail
from schemas.ids import new_ulid
from soul_common.indexes import IndexMissing

log = structlog.get_logger(__name__)

# google-api-core errors that mean "a backend is down or slow", not "the request is wrong".
_UNAVAILABLE = (gexc.FailedPrecondition, gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError, gexc.InternalServerError,
                gexc.TooManyRequests)
# The deployed front (functions/http/asgi.py) asks the router to judge an upload's head before it reads the body:
# with this environ key set, an admitted request (endpoint, key and role checked) is answered with this status.
PREFLIGHT = "soul.preflight"
PREFLIGHT_ADMITTED = 100
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Pages of the service itself: public even when API keys are configured.
_PUBLIC_PAGES = {"/openapi.json": "openapi", "/docs": "docs", "/": "web", "/favicon.ico": "favicon",
                 "/ui/<name>": "ui_asset"}


class Api:
    """One instance per process: routing table compiled once, services built once."""

    def __init__(self, settings: FunctionsSettings, clients: Clients, keys: KeyRing | None = None):
        self._settings = settings
        self._services = build_services(settings, clients, keys)
        self._auth_failures = FailedAuthLimiter(settings.auth_failure_burst, settings.auth_failures_per_minute,
                                                settings.auth_failure_sources)
        self._platform_admins = frozenset(a.strip() for a in settings.platform_admins.split(",") if a.strip())
        self._endpoints = {ep.name: ep for ep in ENDPOINTS}
        self._routes = Map(
            [Rule(ep.rule, endpoint=ep.name, methods=[ep.method]) for ep in ENDPOINTS]
            + [Rule(path, endpoint=name, methods=["GET"]) for path, name in _PUBLIC_PAGES.items()],
            strict_slashes=False,
        )

    @property
    def services(self):
        return self._services

    @property
    def settings(self) -> FunctionsSettings:
        return self._settings

    def __call__(self, request: flask.Request) -> flask.Response:
        supplied = request.headers.get("X-Request-Id", "")
        request_id = supplied if _REQUEST_ID.match(supplied) else new_ulid()
        started = time.perf_counter()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            response = self._dispatch(request)
        except errors.SoulError as exc:
            response = _json(exc.status, _error_body(exc))
            response.headers.update(exc.headers)
        except IndexMissing as exc:
            # A query this deployment has no index for (infra/terraform/firestore.tf): an operator's fix, not
            # the caller's fault and not a crash. Retryable once the index is built.
            log.error("firestore_index_missing", shape=repr(exc.shape), reason=exc.reason)
            response = _json(503, _error_body(errors.Unavailable("a backing service is unavailable; retry later")))
        except _UNAVAILABLE as exc:
            log.warning("backend_unavailable", error=str(exc))
            response = _json(503, _error_body(errors.Unavailable("a backing service is unavailable; retry later")))
        except Exception:  # noqa: BLE001 - the last line of defence: log it, never show a stack trace
            log.exception("unhandled_error")
            response = _json(500, _error_body(errors.Internal(f"internal error (request id {request_id})")))
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
        response.headers["X-Request-Id"] = request_id
        add_security_headers(response, request.path, self._settings.signed_url_endpoint)
        if response.status_code != PREFLIGHT_ADMITTED:  # an admitted head is logged with its whole request
            log.info("request", method=request.method, path=request.path, status=response.status_code,
                     latency_ms=round((time.perf_counter() - started) * 1000, 2))
        return response

    def _options(self, request: flask.Request) -> flask.Response:
        """`OPTIONS` on any path: what the path allows (204 + Allow, as the endpoint table and OpenAPI say), in the
        router like every other answer (security headers, request id, the error shape for an unknown path). No
        CORS headers: the API has no browser origin of its own besides its pages, so a cross-origin preflight
        fails closed."""
        allowed = self._allowed(request.path)
        if not allowed:
            raise errors.NotFound(f"no endpoint {request.path}")
        response = flask.Response(status=204)
        response.headers["Allow"] = allowed
        response.headers["Cache-Control"] = "no-store"
        return response

    def _allowed(self, path: str) -> str:
        """The methods `path` answers, as `Allow` says them (on OPTIONS and on every 405 alike); "" for no path."""
        allowed = set(self._routes.bind("localhost").allowed_methods(path))
        if not allowed:
            return ""
        head = "GET" in allowed and self._public_path(path)  # HEAD only where GET is a page or probe
        return ", ".join(sorted({m for m in allowed if m != "HEAD" or head} | {"OPTIONS"}))

    def _not_allowed(self, request: flask.Request) -> errors.MethodNotAllowed:
        allowed = self._allowed(request.path)
        return errors.MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {allowed}",
                                       headers={"Allow": allowed})

    def _public_path(self, path: str) -> bool:
        try:
            name, _ = self._routes.bind("localhost").match(path, method="GET")
        except (WzMethodNotAllowed, WzNotFound):
            return False
        return name in _PUBLIC_PAGES.values() or self._endpoints[name].public

    def _dispatch(self, request: flask.Request) -> flask.Response:
        if request.method == "OPTIONS":
            return self._options(request)
        try:
            name, params = self._routes.bind("localhost").match(request.path, method=request.method)
        except WzMethodNotAllowed:
            raise self._not_allowed(request) from None
        except WzNotFound:
            raise errors.NotFound(f"no endpoint {request.path}") from None
        if request.method == "HEAD" and name not in _PUBLIC_PAGES.values() \
                and not self._endpoints[name].public:
            # HEAD must never do a GET's work (GET /image creates jobs): only pages and probes answer it.
            raise self._not_allowed(request)
        if name == "openapi":
            return flask.Response(json.dumps(openapi_document()), mimetype="application/json")
        if name in ("docs", "web"):
            return webpage.respond(request, webpage.page(name))
        if name in ("favicon", "ui_asset"):
            file = webpage.asset(params.get("name", "favicon.ico"))
            if file is None:
                raise errors.NotFound(f"no file {request.path}")
            return webpage.respond(request, file)
        endpoint = self._endpoints[name]
        principal = LOCAL if endpoint.public else self._authenticate(request)
        if endpoint.role == "admin" and not principal.is_admin:
            raise errors.PermissionDenied(f"{request.method} {endpoint.rule} needs an admin key; this key's role "
                                          f"is '{principal.role}'")
        if request.environ.get(PREFLIGHT):
            return flask.Response(status=PREFLIGHT_ADMITTED)
        if not endpoint.public:
            self._services.quotas.check_rate(principal.tenant)
        for param, pattern in endpoint.path_params.items():
            if not re.fullmatch(pattern, params[param]):
                raise errors.InvalidInput(f"{param} is not well-formed (expected {pattern})", field=param)
        self._refuse_misplaced_input(request, endpoint)
        call = Call(
            request=request,
            path=params,
            query=parse(endpoint.query, _query_dict(request)) if endpoint.query else None,
            body=(read_upload(request, endpoint.body, self._settings.max_upload_body_bytes) if endpoint.upload
                  else parse_json(endpoint.body, self._json_body(request)) if endpoint.body else None),
            principal=principal,
        )
        key = request.headers.get("Idempotency-Key")
        if endpoint.creates_work and key is not None:
            body = call.body.model_dump(mode="json") if call.body else None
            fingerprint = request_fingerprint(request.method, request.path, _query_dict(request), body)
            stored = self._services.idempotency.run_once(key, principal.scope, fingerprint,
                                                         lambda: self._run(endpoint, call))
            response = flask.Response(stored.body, status=stored.status, mimetype="application/json")
            response.headers["Idempotency-Key"] = key
            return response
        reply = endpoint.handler(self._services, call)
        if isinstance(reply, WzResponse):
            return reply
        status, body = reply
        return _json(status, body)

    @staticmethod
    def _refuse_misplaced_input(request: flask.Request, endpoint: Endpoint) -> None:
        """Input where the endpoint reads none is refused, never ignored: query parameters beside a JSON body or
        on an endpoint that takes none (`/tasks/stats/summary?days=7` is not a filter), a body sent to an endpoint
        that takes its fields in the query. Probes and the compatibility redirects (file URLs of the original app,
        which may carry a cache-buster) read no query and ignore it."""
        if endpoint.query is None and endpoint.body is None and not endpoint.upload and request.query_string \
                and not endpoint.public and endpoint.tag != "compat":
            names = ", ".join(sorted(request.args)) or request.query_string.decode("latin-1")[:80]
            raise errors.InvalidInput(f"{endpoint.method} {endpoint.rule} takes no query parameters (got {names})",
                                      field="query")
        if (endpoint.body is not None or endpoint.upload) and endpoint.query is None and request.query_string:
            names = ", ".join(sorted(request.args))
            raise errors.InvalidInput(f"{endpoint.method} {endpoint.rule} takes its fields in the body, not in the "
                                      f"query string (got {names})", field="query")
        if endpoint.body is None and not endpoint.upload and request.method in ("POST", "PUT", "PATCH", "DELETE") \
                and (request.content_length or request.headers.get("Transfer-Encoding")):
            where = "the query string" if endpoint.query is not None else "the path"
            raise errors.InvalidInput(f"{endpoint.method} {endpoint.rule} takes no body: its fields go in {where}",
                                      field="body")

    def _run(self, endpoint: Endpoint, call: Call) -> StoredReply:
        status, body = endpoint.handler(self._services, call)
        return StoredReply(status=status, body=body.model_dump_json())

    def _authenticate(self, request: flask.Request) -> Principal:
        """The caller: tenant and role of their API key; in platform mode the verified identity; with auth off
        (local development only) the default tenant as admin."""
        if self._settings.auth_mode == "api_key":
            source = source_of(request.remote_addr, request.headers, self._settings.trusted_proxy_hops)
            wait = self._auth_failures.wait(source)
            if wait > 0:  # before any key is compared: a right guess looks like a wrong one meanwhile
                raise errors.TooManyRequests("too many requests with a wrong API key from this address; retry later",
                                             retry_after=wait, code="auth_rate_limited")
            try:
                return authenticate_key(self._services.keys, request.headers)
            except errors.PermissionDenied:
                self._auth_failures.failed(source)
                raise
        if self._settings.auth_mode == "platform":
            return platform_principal(request.headers, self._platform_admins)
        return LOCAL

    def _json_body(self, request: flask.Request) -> bytes:
        limit = self._settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise errors.PayloadTooLarge(f"the body exceeds {limit} bytes")
        if not request.is_json:
            raise errors.UnsupportedMediaType("send the body as JSON with 'Content-Type: application/json'")
        # At most limit + 1 bytes are ever read, with or without a Content-Length (a chunked body has none).
        raw = _read_at_most(request.stream, limit + 1)
        if len(raw) > limit:
            raise errors.PayloadTooLarge(f"the body exceeds {limit} bytes")
        return raw


def _read_at_most(stream, size: int) -> bytes:
    """Up to `size` bytes of `stream` (a read may return fewer than asked before the end)."""
    parts, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _query_dict(request: flask.Request) -> dict[str, str]:
    """The query's parameters, each given once, decoded as strict UTF-8: werkzeug keeps an undecodable escape
    (`%ff`) as its literal text, which would make `cue=%ff` and `cue=%25ff` one cue."""
    try:
        pairs = parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise errors.InvalidInput("the query string is not UTF-8: percent-escape the UTF-8 bytes of each value",
                                  field="query") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            count = sum(1 for other, _ in pairs if other == name)
            raise errors.InvalidInput(f"{name} is given {count} times; give it once", field=name)
        query[name] = value
    return query


def _json(status: int, body: BaseModel) -> flask.Response:
    return flask.Response(body.model_dump_json(), status=status, mimetype="application/json")


def _error_body(exc: errors.SoulError) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(code=exc.code, message=exc.message, field=exc.field))


def error_response(exc: errors.SoulError) -> flask.Response:
    """The error shape for failures raised in front of the router (functions/http/asgi.py: body limits)."""
    response = _json(exc.status, _error_body(exc))
    response.headers.update(exc.headers)
    add_security_headers(response, "", None)
    return response


def structured_error(status: int, message: str) -> flask.Response:
    """The error shape for failures raised outside the router (by Flask itself)."""
    codes = {400: errors.InvalidInput, 404: errors.NotFound, 405: errors.MethodNotAllowed}
    error_type = codes.get(status, errors.Internal)
    response = _json(status, _error_body(error_type(message)))
    add_security_headers(response, "", None)
    return response
