"""Upload bodies of the admin identity endpoints: JSON (`application/json`, files as base64) or
`multipart/form-data` (files as parts, other fields as form values), bounded before they are read: a declared
length over the limit is refused at once, and a body without one (chunked) is read no further than the limit.
Either way the fields are validated by the same schemas/ model."""

from __future__ import annotations

from typing import TypeVar

import flask
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from functions.core import errors
from functions.core.validation import _invalid, parse_json

M = TypeVar("M", bound=BaseModel)


def read_upload(request: flask.Request, model: type[M], limit: int) -> M:
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge(f"the body is {request.content_length} bytes; uploads take at most {limit}")
    request.max_content_length = limit  # werkzeug stops reading a longer stream (chunked bodies included)
    try:
        if request.mimetype == "multipart/form-data":
            return _multipart(request, model)
        if not request.is_json:
            raise errors.UnsupportedMediaType("send the upload as multipart/form-data, or as JSON with the file "
                                              "base64-encoded")
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            raise errors.PayloadTooLarge(f"the body exceeds {limit} bytes")
        return parse_json(model, raw)
    except RequestEntityTooLarge:
        raise errors.PayloadTooLarge(f"the body exceeds {limit} bytes") from None


def _multipart(request: flask.Request, model: type[M]) -> M:
    fields: dict[str, object] = {}
    for name, values in request.form.lists():
        if len(values) > 1:
            raise errors.InvalidInput(f"{name} is given {len(values)} times; give it once", field=name)
        fields[name] = values[0]
    for name, files in request.files.lists():
        if len(files) > 1 or name in fields:
            raise errors.InvalidInput(f"{name} is given more than once; give it once", field=name)
        fields[name] = files[0].read()
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None
