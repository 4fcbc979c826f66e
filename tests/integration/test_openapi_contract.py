"""Schemathesis against the generated OpenAPI document of the real api function, served over HTTP on the
emulators: more than a thousand generated requests, valid and invalid; none may get a 5xx, and every answer must
match the schema (status codes, bodies, content types)."""

from __future__ import annotations

import threading

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from werkzeug.serving import make_server

from functions.openapi import openapi_document

# The document is a pure function of the endpoint table and schemas/: loading it needs no running service.
schema = schemathesis.openapi.from_dict(openapi_document())
CASES: dict[str, int] = {}
EXAMPLES_PER_OPERATION = 70
# Rules a JSON Schema cannot state: a cue must keep a letter, digit or symbol after normalization, a cursor must
# name a position the list gave out, a city and mood must be in the shipped catalog, an image_path must name a
# known variant's image, a webhook must be callable (a public https address, and a signing secret configured), a
# warm pool's `variants` within the deployment's bound (and the pool on). Schema-valid requests may
# get a 400 for these fields only; schemathesis' own positive-data check is replaced by this narrower one.
SEMANTIC_400_FIELDS = {"cue", "cursor", "city_key", "mood", "image_path", "webhook", "variants"}


@pytest.fixture(scope="module")
def live_api(api_app, emulator_stack):
    server = make_server("127.0.0.1", 0, api_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_its_contract(case, live_api):
    CASES[case.operation.label] = CASES.get(case.operation.label, 0) + 1
    response = case.call_and_validate(base_url=live_api, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500, response.text
    if case.meta.generation.mode.is_positive and response.status_code == 400:
        assert response.json()["error"]["field"] in SEMANTIC_400_FIELDS, (case.as_curl_command(), response.text)


def test_served_document_is_the_generated_one(api_app, emulator_stack):
    assert api_app.test_client().get("/openapi.json").json == openapi_document()


def test_at_least_a_thousand_cases_ran():
    assert sum(CASES.values()) >= 1000, CASES
