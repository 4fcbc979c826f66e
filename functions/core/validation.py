"""Validating input at the boundary into schemas/ models: query parameters (strings converted as the fields say)
and JSON bodies (strict: JSON types must match the schema), with the first problem as a 400 that names the field.
Shared by the HTTP router and the ingest function, which take the same bodies."""

from __future__ import annotations

import json
import re
import types
from typing import TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from functions.core import errors

M = TypeVar("M", bound=BaseModel)


_QUERY_INTEGER = re.compile(r"-?[0-9]{1,20}")
_QUERY_BOOLEANS = frozenset({"true", "false", "1", "0"})


def parse(model: type[M], raw: dict[str, str]) -> M:
    """Validate query parameters (strings, converted as their fields say) into `model`. Integers are ASCII digits
    (no `+10`, ` 10`, `1_0` or `10.0`) and booleans `true`/`false`/`1`/`0`, so one value has one spelling."""
    for name, value in raw.items():
        field = model.model_fields.get(name)
        kind = _scalar(field.annotation) if field is not None else None
        if kind is int and not _QUERY_INTEGER.fullmatch(value):
            raise errors.InvalidInput(f"{name}: an integer, written as digits", field=name)
        if kind is bool and value.lower() not in _QUERY_BOOLEANS:
            raise errors.InvalidInput(f"{name}: true or false", field=name)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _scalar(annotation) -> type | None:
    """`int` for `int` and `int | None` (likewise bool); None for anything else."""
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    return annotation if annotation in (int, bool) else None


def parse_json(model: type[M], raw: bytes) -> M:
    """Validate a JSON body strictly: JSON types must match the schema (no "0" for 0, no 0 for a date). As in
    JSON Schema, a number with a zero fraction (64.0) is an integer; NaN and Infinity are not JSON."""
    try:
        canonical = json.dumps(json.loads(raw, parse_float=_json_number, parse_constant=_no_constants,
                                          object_pairs_hook=_unique_keys))
    except _DuplicateKey as exc:
        raise errors.InvalidInput(f"{exc.key}: given twice in one object; give it once", field=exc.key) from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise errors.InvalidInput("the body is not valid JSON") from None
    try:
        return model.model_validate_json(canonical, strict=True)
    except ValidationError as exc:
        raise _invalid(exc) from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """An object whose keys are each given once: `{"cue": "a", "cue": "b"}` is refused, as a repeated query
    parameter is (JSON would keep the last one silently, and another parser the first)."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _json_number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def _invalid(exc: ValidationError) -> errors.InvalidInput:
    """The first problem, as a 400 naming the field."""
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    message = {"extra_forbidden": "unknown field", "json_invalid": "the body is not valid JSON",
               "model_type": "expected a JSON object"}.get(first["type"], first["msg"])
    return errors.InvalidInput(f"{field}: {message}" if field else message, field=field)
