"""Base model for every contract: frozen, strict about unknown fields, enums stored as their values."""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    """A frozen contract model; unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=True)


class Reply(BaseModel):
    """A response body: frozen; readers ignore fields they do not know, so older clients survive additions."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_enum_values=True)


class Document(BaseModel):
    """A Firestore document model: frozen, but tolerant of fields added by newer writers."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_enum_values=True)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def firestore_dict(model: BaseModel) -> dict:
    """The model as a Firestore document: datetimes stay native, tuples become arrays, enums their values."""
    return _arrays_as_lists(model.model_dump(mode="python"))


def _arrays_as_lists(value):
    if isinstance(value, dict):
        return {k: _arrays_as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_arrays_as_lists(v) for v in value]
    return value
