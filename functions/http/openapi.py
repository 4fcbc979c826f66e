"""The OpenAPI 3.1 document of the `api` function, generated from the endpoint table and the pydantic models in
schemas/ (never written by hand). The page that renders it is
`data/docs.html` (served by `webpage.py`; no CDN: works offline)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import metadata

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from functions.http.routes import ENDPOINTS, Endpoint
from schemas.api import ErrorBody
from schemas.push import TaskUpdate

REF = "#/components/schemas/{model}"
_ERRORS = {
    400: "The request is malformed or out of bounds.",
    401: "No API key was sent (when keys are configured).",
    403: "The API key is not valid, or its role may not do this.",
    404: "The soul, variant, task or style does not exist.",
    405: "The path does not take this method.",
    409: "The request contradicts the current state.",
    413: "The body is too large.",
    415: "The body is not JSON.",
    422: "An Idempotency-Key was reused with a different request, or the tenant's content policy refuses the "
         "request (code `content_policy`: a blocked term in the cue, or animating a flagged image).",
    429: "The tenant's rate limit or a quota is used up; `Retry-After` says when to retry.",
    500: "An unexpected failure (details in the logs under the request id).",
    503: "A backing service is unavailable; retry later.",
}


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def _query_parameters(model: type[BaseModel]) -> list[dict]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        # A query parameter is absent, never null: drop the null branch pydantic adds for optional fields.
        if "anyOf" in prop:
            branches = [b for b in prop["anyOf"] if b.get("type") != "null"]
            if len(branches) == 1:
                rest = {k: v for k, v in prop.items() if k != "anyOf"}
                prop = {**branches[0], **rest}
        if prop.get("default", 0) is None:
            del prop["default"]
        description = prop.pop("description", None)
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if prop.get("type") == "array":  # one comma-separated value (`a,b`): a repeated parameter is a 400
            param.update(style="form", explode=False)
        if description:
            param["description"] = description
        params.append(param)
    return params


def _models(endpoints: Sequence[Endpoint]) -> list[tuple[type[BaseModel], str]]:
    pairs: set[tuple[type[BaseModel], str]] = {(ErrorBody, "serialization")}
    for ep in endpoints:
        if ep.media_type == "text/event-stream":
            pairs.add((TaskUpdate, "serialization"))  # the data of each `update` event (see `_operation`)
        if ep.body is not None:
            pairs.add((ep.body, "validation"))
        for model in ep.responses.values():
            if model is not None:
                pairs.add((model, "serialization"))
    return sorted(pairs, key=lambda p: (p[0].__name__, p[1]))


def _operation(ep: Endpoint, refs: dict) -> dict:
    op: dict = {"operationId": ep.name, "summary": ep.summary, "tags": [ep.tag], "parameters": []}
    for name, pattern in ep.path_params.items():
        op["parameters"].append(
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern}}
        )
    if ep.query is not None:
        op["parameters"].extend(_query_parameters(ep.query))
    if ep.creates_work:
        op["parameters"].append(
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "description": "Same key and body: the same answer; same key, other body: 422.",
             "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[\\x21-\\x7e]+$"}}
        )
    if ep.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(ep.body, "validation")]}},
        }
        if ep.upload:  # the same fields as multipart parts: files as binary parts
            op["requestBody"]["content"]["multipart/form-data"] = {"schema": refs[(ep.body, "validation")]}
    responses: dict = {}
    for status, model in ep.responses.items():
        if model is None and ep.media_type == "text/event-stream":
            responses[str(status)] = {
                "description": "A stream of server-sent events (`update`, `end`, `timeout`, `error`).",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                # The JSON in each event's `data`, by event name: the clients generate their types from it.
                "x-event-data": {"update": refs[(TaskUpdate, "serialization")]},
            }
        elif model is None:
            responses[str(status)] = {
                "description": "Redirect to a signed URL.",
                "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
            }
        else:
            responses[str(status)] = {
                "description": (model.__doc__ or model.__name__).strip().splitlines()[0],
                "content": {"application/json": {"schema": refs[(model, "serialization")]}},
            }
    error_ref = refs[(ErrorBody, "serialization")]
    for status, text in _ERRORS.items():
        if str(status) in responses or (status in (401, 403, 429) and ep.public):
            continue
        responses[str(status)] = {"description": text, "content": {"application/json": {"schema": error_ref}}}
    op["responses"] = responses
    if not ep.public:
        op["security"] = [{"bearer": []}, {"apiKey": []}, {}]
    return op


@cache
def openapi_document() -> dict:
    refs, defs = models_json_schema(_models(ENDPOINTS), ref_template=REF)
    paths: dict = {}
    for ep in ENDPOINTS:
        paths.setdefault(_openapi_path(ep.rule), {})[ep.method.lower()] = _operation(ep, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Soul API",
            "version": metadata.version("soul"),
            "description": "Images and animations of AI characters from short cues. Every error has the shape "
            "`{\"error\": {\"code\", \"message\", \"field\"}}`.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
