"""The selfie place chooser: a pure, deterministic choice of a place in a city that fits a mood, avoiding the
places this user got recently. The catalog of cities and places ships as data (`data/places.json`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

# How many recent places per user the chooser avoids.
RECENT_PLACES_KEPT = 5


class CatalogPlace(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    name: str
    moods: tuple[str, ...]


class City(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    places: tuple[CatalogPlace, ...]


class PlaceCatalog(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    moods: tuple[str, ...]
    cities: dict[str, City]


class UnknownChoice(ValueError):
    """The city or mood is not in the catalog; `valid` lists what is."""

    def __init__(self, field: str, value: str, valid: Sequence[str]):
        super().__init__(f"unknown {field} '{value}'; valid: {', '.join(valid)}")
        self.field = field
        self.valid = tuple(valid)


@cache
def shipped_places() -> PlaceCatalog:
    raw = resources.files("functions").joinpath("data/places.json").read_text("utf-8")
    return PlaceCatalog.model_validate(json.loads(raw))


def choose_place(
    catalog: PlaceCatalog, city_key: str, mood: str, recent: Sequence[str], seed: str
) -> CatalogPlace:
    """Pick a place in `city_key` fitting `mood`, not among `recent` (most recent last) when avoidable.

    Deterministic: the same catalog, city, mood, recent list and seed always give the same place. When every
    fitting place is recent, the one used longest ago is chosen again."""
    city = catalog.cities.get(city_key)
    if city is None:
        raise UnknownChoice("city_key", city_key, sorted(catalog.cities))
    if mood not in catalog.moods:
        raise UnknownChoice("mood", mood, catalog.moods)
    fitting = [p for p in city.places if mood in p.moods]
    fresh = [p for p in fitting if p.key not in recent]
    if not fresh:
        return min(fitting, key=lambda p: list(recent).index(p.key))
    digest = hashlib.sha256(f"{seed}|{city_key}|{mood}|{','.join(recent)}".encode()).digest()
    return fresh[int.from_bytes(digest[:8], "big") % len(fresh)]


def remember(recent: Sequence[str], place_key: str) -> list[str]:
    """The recent list after `place_key` was given: moved to the end, bounded."""
    kept = [k for k in recent if k != place_key] + [place_key]
    return kept[-RECENT_PLACES_KEPT:]


def selfie_cue(place: CatalogPlace, city: City, mood: str) -> str:
    return f"selfie at {place.name} in {city.name}, {mood} mood"
