"""Schemathesis against the generated OpenAPI document of the real api function, served over HTTP on the
emulators: more than a thousand generated requests, valid and invalid; none may get a 5xx, and every answer must
match the schema (status codes, bodies, content types)."""

from __future__ import annotations

import json
import threading

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from werkzeug.serving import make_server

from functions.http.openapi import openapi_document

# The document is a pure function of the endpoint table and schemas/: loading it needs no running service.
schema = schemathesis.openapi.from_dict(openapi_document())
CASES: dict[str, int] = {}
EXAMPLES_PER_OPERATION = 70
# Rules a JSON Schema cannot state: a cue must keep a letter, digit or symbol after normalization, a cursor must
# name a position the list gave out, a city and mood must be in the shipped catalog, an image_path must name a
# known variant's image, a webhook must be callable (a public https address, and a signing secret configured), a
# warm pool's `variants` within the deployment's bound (and the pool on). Schema-valid requests may
# get a 400 for these fields only; schemathesis' own positive-data check is replaced by this narrower one.
# An `updated_at` of a style may not lie further in the future than the allowed clock skew (issue 8).
# Issue 20: an upload's `image`/`lora` must decode as a still image / fit the model's layers, and a request's
# `scheduler` must be one its soul's style allows.
SEMANTIC_400_FIELDS = {"cue", "cursor", "city_key", "mood", "image_path", "updated_at", "webhook", "variants",
                       "image", "lora", "scheduler"}
TENANT_CASES: dict[str, int] = {}
ADMIN_KEY, CLIENT_KEY = "contract-admin-key-0001", "contract-client-key-001"


def serve(app):
    """Serve a WSGI app over HTTP on a free port; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def live_api(api_app, emulator_stack):
    yield from serve(api_app)


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_its_contract(case, live_api):
    CASES[case.operation.label] = CASES.get(case.operation.label, 0) + 1
    response = case.call_and_validate(base_url=live_api, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500, response.text
    if case.meta.generation.mode.is_positive and response.status_code == 400:
        assert response.json()["error"]["field"] in SEMANTIC_400_FIELDS, (case.as_curl_command(), response.text)


@pytest.fixture(scope="module")
def tenant_api(emulator_stack, tmp_path_factory):
    """The api with tenants and roles from a keys file (issue 8), served over HTTP."""
    import flask

    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.settings import FunctionsSettings

    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    keys.write_text(json.dumps([{"tenant": "acme", "role": "admin", "key": ADMIN_KEY},
                                {"tenant": "globex", "role": "client", "key": CLIENT_KEY}]))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SOUL_API_KEYS", raising=False)
        patch.setenv("SOUL_API_KEYS_FILE", str(keys))
        settings = FunctionsSettings()
    api = Api(settings, make_clients(settings.project_id))
    app = flask.Flask("tenants", static_folder=None)
    methods = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"]
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request), methods=methods)
    app.add_url_rule("/", "root", lambda: api(flask.request), methods=methods)
    yield from serve(app)


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_its_contract_with_tenants_and_roles(case, tenant_api):
    """Admin and client keys of two tenants, alternately: still no 5xx, every answer as documented."""
    label = case.operation.label
    TENANT_CASES[label] = TENANT_CASES.get(label, 0) + 1
    key = ADMIN_KEY if TENANT_CASES[label] % 2 else CLIENT_KEY
    response = case.call_and_validate(base_url=tenant_api, headers={"X-API-Key": key},
                                      excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500, response.text


def test_served_document_is_the_generated_one(api_app, emulator_stack):
    assert api_app.test_client().get("/openapi.json").json == openapi_document()


def test_at_least_a_thousand_cases_ran():
    assert sum(CASES.values()) >= 1000, CASES
