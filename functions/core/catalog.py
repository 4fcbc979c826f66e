"""The shipped catalog of souls and their default styles (data in `data/souls.json`)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

from schemas.documents import Style


class CatalogSoul(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    display_name: str
    style: Style


@cache
def shipped_souls() -> dict[str, CatalogSoul]:
    """The catalog is read-only package data, parsed once per process."""
    raw = json.loads(resources.files("functions").joinpath("data/souls.json").read_text("utf-8"))
    return {soul_id: CatalogSoul.model_validate(entry) for soul_id, entry in raw.items()}
