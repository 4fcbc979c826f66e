"""Which Firestore index serves a query: Firestore's documented rules, encoded once, and the indexes the
deployment declares (read from infra/terraform/firestore.tf). The gateway records the shape of every query and
aggregation it runs (`soul_common.firestore.QueryShape`); `uncovered(shapes, declared)` names those no declared
index serves, so a new query without its index fails the test suite (tests/conftest.py checks every shape the
suite recorded) instead of failing on Google Cloud with FAILED_PRECONDITION, which the emulator never answers.

The rules (sources: https://firebase.google.com/docs/firestore/query-data/index-overview "Single-field indexes",
"Composite indexes", "Index merging", "Query scope"; https://firebase.google.com/docs/firestore/query-data/indexing
"Single-field index exemptions"; https://cloud.google.com/blog/products/databases/aggregate-with-sum-and-avg-in-firestore
"a field must be indexed to calculate an aggregation"; https://firebase.google.com/docs/firestore/query-data/queries
"Collection group queries: before using a collection group query, you must create an index that supports it"):

1. Firestore keeps, for every field of every document, an ascending and a descending single-field index and, for
   arrays, an array-contains one, all of *collection* scope, unless an exemption (a `google_firestore_field`
   `index_config`) replaces them. Collection-group scope single-field indexes exist only where declared.
2. A single-field index serves: a filter or order on one field (ranges and an order on that same field); an
   array-contains on one field; an aggregation over one field with no filter. Every query is ordered by
   `__name__` last, which every index carries: it needs nothing.
3. Equality filters on several fields with no other order are served by merging their single-field indexes.
4. Everything else needs a composite index: the equality fields first (any order, any direction), then the
   array-contains field, then the order (and range) fields in the query's order, with the query's directions or
   all of them reversed. `sum()`/`avg()` of a field under filters needs that field in the index, after the rest.
5. Composite indexes merge too: equality filters on fields A and B with the same rest are served by one index
   that starts with A and one that starts with B (each index's equality fields among the query's).
6. A collection-group query needs indexes of collection-group scope (a query with no filter and no order is
   served by the document-name index every collection group has)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

EQUALITY = frozenset({"==", "in"})
CONTAINS = frozenset({"array_contains", "array_contains_any"})
RANGE = frozenset({"<", "<=", ">", ">=", "!=", "not-in"})
NAME = "__name__"
AUTOMATIC = frozenset({("ASCENDING", "COLLECTION"), ("DESCENDING", "COLLECTION"), ("CONTAINS", "COLLECTION")})


class IndexMissing(RuntimeError):
    """Firestore refused a query with FAILED_PRECONDITION: no index serves its shape (on Google Cloud; the emulator
    accepts every query). The gateway raises it; callers answer "unavailable" (503) and log `shape`; the fix is
    a declared index."""

    def __init__(self, shape: Any, reason: str):
        super().__init__(f"no Firestore index serves {shape}: {reason}")
        self.shape = shape
        self.reason = reason


@dataclass(frozen=True)
class Index:
    """A composite index as declared: its collection id, its scope, and its fields (path, mode) where mode is
    ASCENDING, DESCENDING or CONTAINS."""

    name: str
    collection: str
    group: bool
    fields: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class FieldConfig:
    """A single-field override (`google_firestore_field`): `indexes` None keeps the automatic ones; a set
    (possibly empty: an exemption) replaces them, as (mode, scope) pairs. `ttl`: a TTL policy on the field."""

    name: str
    collection: str
    field: str
    indexes: frozenset[tuple[str, str]] | None
    ttl: bool


@dataclass(frozen=True)
class Declared:
    indexes: tuple[Index, ...]
    fields: tuple[FieldConfig, ...]

    def single_field(self, collection: str, field: str) -> frozenset[tuple[str, str]]:
        for config in self.fields:
            if config.collection == collection and config.field == field and config.indexes is not None:
                return config.indexes
        return AUTOMATIC

    def ttl_fields(self) -> dict[str, str]:
        """collection id -> the field its TTL policy deletes by."""
        return {c.collection: c.field for c in self.fields if c.ttl}


@dataclass(frozen=True)
class Need:
    """What one query shape asks of the indexes, in the terms of the rules above."""

    collection: str  # collection id (the last segment of the shape's pattern)
    group: bool
    equality: frozenset[str]
    contains: str | None
    rest: tuple[tuple[str, str], ...]  # order/range/aggregated fields: (path, ASCENDING | DESCENDING)


def need(shape: Any) -> Need:
    """The index need of a `QueryShape` (filters as (field, op), orders as (field, asc|desc), aggregate)."""
    equality = frozenset(f for f, op in shape.filters if op in EQUALITY and f != NAME)
    contains = [f for f, op in shape.filters if op in CONTAINS]
    if len(contains) > 1:
        raise ValueError(f"Firestore allows one array-contains filter per query: {shape}")
    rest: list[tuple[str, str]] = [(f, "DESCENDING" if d == "desc" else "ASCENDING")
                                   for f, d in shape.orders if f != NAME]
    for f, op in shape.filters:  # a range field not ordered explicitly is ordered first, ascending
        if op in RANGE and f != NAME and f not in {r for r, _ in rest}:
            rest.insert(0, (f, "ASCENDING"))
    if shape.aggregate is not None and shape.aggregate[0] in {"sum", "avg"}:
        agg_field = shape.aggregate[1]
        if agg_field not in {r for r, _ in rest}:
            rest.append((agg_field, "ASCENDING"))
    return Need(collection=shape.collection.split("/")[-1], group=shape.group, equality=equality,
                contains=contains[0] if contains else None, rest=tuple(rest))


def _single_field_serves(n: Need, declared: Declared) -> bool:
    scope = "COLLECTION_GROUP" if n.group else "COLLECTION"

    def has(field: str, mode: str) -> bool:
        return (mode, scope) in declared.single_field(n.collection, field)

    if not n.equality and n.contains is None and not n.rest:
        return True  # rule 2/6: ordered by __name__ only
    if not n.equality and n.contains is None and len({f for f, _ in n.rest}) == 1:
        field = n.rest[0][0]
        return has(field, "ASCENDING") or has(field, "DESCENDING")
    if not n.equality and n.contains is not None and not n.rest:
        return has(n.contains, "CONTAINS")
    if n.equality and n.contains is None and not n.rest:  # rule 3: merge single-field indexes
        return all(has(f, "ASCENDING") or has(f, "DESCENDING") for f in n.equality)
    return False


def _tail_matches(tail: tuple[tuple[str, str], ...], n: Need) -> bool:
    want = ((n.contains, "CONTAINS"),) if n.contains else ()
    fields = tuple(f for f, _ in tail)
    if fields != tuple(f for f, _ in want) + tuple(f for f, _ in n.rest):
        return False
    modes = [m for _, m in tail[len(want):]]
    if [m for _, m in tail[:len(want)]] != [m for _, m in want]:
        return False
    wanted = [m for _, m in n.rest]
    flipped = ["DESCENDING" if m == "ASCENDING" else "ASCENDING" for m in wanted]
    return modes in (wanted, flipped)


def _split(index: Index, n: Need) -> tuple[frozenset[str], tuple[tuple[str, str], ...]] | None:
    """An index's equality prefix (fields among the query's equality fields) and its tail, or None."""
    fields = tuple((f, m) for f, m in index.fields if f != NAME)
    cut = 0
    while cut < len(fields) and fields[cut][0] in n.equality and fields[cut][1] != "CONTAINS":
        cut += 1
    return frozenset(f for f, _ in fields[:cut]), fields[cut:]


def serving(n: Need, declared: Declared) -> list[Index] | None:
    """The declared composite indexes that together serve `n` (rules 4, 5), [] when single-field indexes do,
    None when nothing does."""
    if _single_field_serves(n, declared):
        return []
    candidates = []
    for index in declared.indexes:
        if index.collection != n.collection or index.group != n.group:
            continue
        split = _split(index, n)
        if split is not None and _tail_matches(split[1], n):
            candidates.append((split[0], index))
    if not n.equality:
        return [index for prefix, index in candidates if not prefix][:1] or None
    used: list[Index] = []
    for field in sorted(n.equality):
        match = next((index for prefix, index in candidates if field in prefix), None)
        if match is None:
            return None
        if match not in used:
            used.append(match)
    return used


def uncovered(shapes: Iterable[Any], declared: Declared) -> list[Any]:
    """The shapes no declared index serves, in a stable order."""
    return sorted((s for s in set(shapes) if serving(need(s), declared) is None), key=repr)


def unused(shapes: Iterable[Any], declared: Declared) -> list[Index]:
    """Declared composite indexes that serve none of `shapes` (stale when `shapes` is the whole suite's)."""
    used = {index for s in set(shapes) for index in (serving(need(s), declared) or [])}
    return [index for index in declared.indexes if index not in used]


# ---- reading infra/terraform/firestore.tf ---------------------------------------------------------------------

_TOKEN = re.compile(r'\s*(?:#[^\n]*|//[^\n]*|("(?:[^"\\]|\\.)*")|([A-Za-z_][A-Za-z0-9_.-]*)|(\S))')


def _tokens(text: str) -> list[str]:
    out = []
    for match in _TOKEN.finditer(text):
        string, word, punct = match.groups()
        token = string or word or punct
        if token:
            out.append(token)
    return out


def _value(tokens: list[str], i: int) -> tuple[Any, int]:
    token = tokens[i]
    if token == "{":
        obj: dict = {}
        i += 1
        while tokens[i] != "}":
            key = tokens[i].strip('"')
            if tokens[i + 1] not in {"=", ":"}:
                raise ValueError(f"expected '=' after {key!r} in a Terraform local")
            obj[key], i = _value(tokens, i + 2)
            if tokens[i] == ",":
                i += 1
        return obj, i + 1
    if token == "[":
        items = []
        i += 1
        while tokens[i] != "]":
            item, i = _value(tokens, i)
            items.append(item)
            if tokens[i] == ",":
                i += 1
        return items, i + 1
    if token.startswith('"'):
        return token[1:-1], i + 1
    literals = {"true": True, "false": False, "null": None}
    if token in literals:
        return literals[token], i + 1
    raise ValueError(f"unsupported Terraform expression {token!r} in firestore.tf locals")


def terraform_local(text: str, name: str) -> Any:
    """The value of `name = {...}` inside a `locals` block (literals only: objects, lists, strings, bools)."""
    tokens = _tokens(text)
    for i, token in enumerate(tokens[:-2]):
        if token == name and tokens[i + 1] == "=":
            return _value(tokens, i + 2)[0]
    raise KeyError(f"no local {name!r} in the Terraform")


def from_terraform(text: str) -> Declared:
    """The composite indexes (`local.firestore_indexes`) and single-field settings (`local.firestore_fields`)."""
    indexes = tuple(
        Index(name=name, collection=spec["collection"], group=spec.get("scope", "COLLECTION") == "COLLECTION_GROUP",
              fields=tuple((f, m) for f, m in spec["fields"]))
        for name, spec in terraform_local(text, "firestore_indexes").items())
    fields = tuple(
        FieldConfig(name=name, collection=spec["collection"], field=spec["field"], ttl=bool(spec.get("ttl")),
                    indexes=None if spec.get("indexes") is None
                    else frozenset((mode, scope) for mode, scope in spec["indexes"]))
        for name, spec in terraform_local(text, "firestore_fields").items())
    return Declared(indexes=indexes, fields=fields)


def describe(shape: Any) -> str:
    """A shape as a reader of firestore.tf thinks of it."""
    n = need(shape)
    parts = [f"{'collection group' if n.group else 'collection'} {n.collection!r}"]
    if n.equality:
        parts.append("== on " + ", ".join(sorted(n.equality)))
    if n.contains:
        parts.append(f"array-contains on {n.contains}")
    if n.rest:
        parts.append("then " + ", ".join(f"{f} {m}" for f, m in n.rest))
    return "; ".join(parts)

