"""The Firestore gateway: the one module that calls a Firestore client, for every deployable (the functions'
adapters, the runner's job store, the reconciler). Everything else names documents by path and describes queries
with `Query`; this module runs them with a deadline on every call, translates the client's outcomes into plain
answers (`create` -> created or not, a conditional `update` -> applied or stale), and records each call in a
`Ledger`: reads and writes by collection, writes per document per second (hot documents), and the shape of every
query and aggregation (which indexes it needs).

Why one gateway: a deadline change, a collection rename, counting what a request costs, or checking queries
against declared indexes must each be one change in one place, not a grep over a dozen modules."""

from __future__ import annotations

import contextvars
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from soul_common.deadlines import deadline
from soul_common.indexes import IndexMissing

# ---- values with server-side meaning -------------------------------------------------------------------------

DELETE_FIELD = firestore.DELETE_FIELD


def increment(by: int | float) -> Any:
    """A field transform: add `by` on the server (no read, never lost to a race)."""
    return firestore.Increment(by)


def array_union(values: Iterable[Any]) -> Any:
    return firestore.ArrayUnion(list(values))


def array_remove(values: Iterable[Any]) -> Any:
    return firestore.ArrayRemove(list(values))


def field_path(*parts: str) -> str:
    """A dotted field path whose parts may hold any characters (map keys such as tenant names)."""
    return FieldPath(*parts).to_api_repr()


class Missing(LookupError):
    """An update named a document that does not exist."""


# ---- paths, snapshots, queries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocRef:
    """A document by its path: (collection, id, sub-collection, id, ...)."""

    segments: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.segments or len(self.segments) % 2:
            raise ValueError(f"a document path has an even number of segments, got {self.segments!r}")

    @property
    def id(self) -> str:
        return self.segments[-1]

    @property
    def path(self) -> str:
        return "/".join(self.segments)

    @property
    def collection(self) -> str:
        """The collection's pattern, ids replaced by `*` (e.g. `jobs/*/webhooks`)."""
        return _pattern(self.segments[:-1])

    def child(self, collection: str, doc_id: str) -> DocRef:
        return DocRef((*self.segments, collection, doc_id))


def doc(*segments: str) -> DocRef:
    return DocRef(tuple(segments))


@dataclass(frozen=True)
class Snapshot:
    """A document as read: `data` is None when it does not exist; `update_time` makes conditional writes."""

    ref: DocRef
    data: dict | None
    update_time: datetime | None = None
    _raw: Any = field(default=None, repr=False, compare=False)  # the client's snapshot: query cursors

    @property
    def exists(self) -> bool:
        return self.data is not None

    @property
    def id(self) -> str:
        return self.ref.id


Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not-in", "array_contains", "array_contains_any"]


@dataclass(frozen=True)
class QueryShape:
    """What a query asks of Firestore's indexes: its scope, filters, order and aggregated field (no values)."""

    collection: str  # pattern, e.g. `jobs` or `warm_pool/*/askers`; for a collection group just its id
    group: bool
    filters: tuple[tuple[str, str], ...]  # (field, operator)
    orders: tuple[tuple[str, str], ...]  # (field, "asc" | "desc")
    aggregate: tuple[str, str | None] | None = None  # ("count" | "sum" | "avg", field)


@dataclass(frozen=True)
class Query:
    """An immutable description of a query; run it with `Db.stream`, `Db.count`, `Db.sum`, `Db.aggregate`."""

    parent: tuple[str, ...]  # the document the collection hangs under; () for a root collection or a group
    collection: str
    group: bool = False
    filters: tuple[tuple[str, str, Any], ...] = ()
    orders: tuple[tuple[str, str], ...] = ()
    limit_to: int | None = None
    after: Snapshot | None = None
    after_id: str | None = None  # with order_by("__name__"): start after the document of this id (a cursor)

    def where(self, field_name: str, op: Op, value: Any) -> Query:
        return replace(self, filters=(*self.filters, (field_name, op, value)))

    def order_by(self, field_name: str, *, descending: bool = False) -> Query:
        return replace(self, orders=(*self.orders, (field_name, "desc" if descending else "asc")))

    def limit(self, count: int) -> Query:
        return replace(self, limit_to=count)

    def start_after(self, snapshot: Snapshot) -> Query:
        return replace(self, after=snapshot)

    def start_after_id(self, doc_id: str) -> Query:
        """Resume a scan ordered by `__name__` after the document `doc_id` (which need not exist any more)."""
        return replace(self, after_id=doc_id)

    def shape(self, aggregate: tuple[str, str | None] | None = None) -> QueryShape:
        scope = self.collection if self.group else _pattern((*self.parent, self.collection))
        return QueryShape(collection=scope, group=self.group, filters=tuple((f, op) for f, op, _ in self.filters),
                          orders=self.orders, aggregate=aggregate)


def collection(*segments: str) -> Query:
    """A query over a collection: `collection("jobs")`, `collection("warm_pool", pk, "askers")`."""
    if len(segments) % 2 != 1:
        raise ValueError(f"a collection path has an odd number of segments, got {segments!r}")
    return Query(parent=tuple(segments[:-1]), collection=segments[-1])


def collection_group(collection_id: str) -> Query:
    return Query(parent=(), collection=collection_id, group=True)


def _pattern(segments: Sequence[str]) -> str:
    return "/".join(s if i % 2 == 0 else "*" for i, s in enumerate(segments))


# ---- accounting ----------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Reads and writes made inside one `Ledger.tally()` block (one request, one job), across threads of it."""

    reads: int = 0
    writes: int = 0
    queries: int = 0
    contended: int = 0  # writes refused for a lost race or a create conflict
    round_trips: int = 0  # calls to Firestore (a get_all or a batch is one): what sets a request's latency
    by_collection: Counter = field(default_factory=Counter)  # ("read" | "write", collection pattern) -> count

    def add(self, kind: str, collection: str, count: int) -> None:
        if kind == "write":
            self.writes += count
        else:
            self.reads += count
        if kind == "query":
            self.queries += 1
        self.by_collection[("write" if kind == "write" else "read", collection)] += count


_current_tally: contextvars.ContextVar[Tally | None] = contextvars.ContextVar("soul_firestore_tally", default=None)


class Ledger:
    """Per-process accounting of Firestore calls. Bounded: per-document rates are kept for at most `max_docs`
    documents (then started afresh); shapes are bounded by the code's own queries."""

    def __init__(self, *, max_docs: int = 100_000, clock=time.time, keep_timeline: bool = False):
        self._lock = threading.Lock()
        # (second, document path) -> write attempts, for merging several processes' ledgers (bench/scale.py)
        self.timeline: Counter | None = Counter() if keep_timeline else None
        self._clock = clock
        self._max_docs = max_docs
        self.reads: Counter = Counter()  # collection pattern -> documents read (an aggregation counts 1)
        self.writes: Counter = Counter()  # collection pattern -> documents written
        self.contention: Counter = Counter()  # collection pattern -> writes refused (lost races, conflicts)
        self.shapes: set[QueryShape] = set()
        self._rate: dict[str, list] = {}  # doc path -> [second, writes in it, peak, second of peak]

    def read(self, collection: str, count: int = 1, kind: str = "read") -> None:
        with self._lock:
            self.reads[collection] += count
        tally = _current_tally.get()
        if tally is not None:
            tally.add(kind, collection, count)

    def wrote(self, ref: DocRef) -> None:
        self._attempt(ref)
        with self._lock:
            self.writes[ref.collection] += 1
        tally = _current_tally.get()
        if tally is not None:
            tally.add("write", ref.collection, 1)

    def contended(self, ref: DocRef) -> None:
        """A write Firestore refused because the document changed or exists (a lost race, a create conflict):
        it still counts towards the document's writes per second (it contended for the same document)."""
        self._attempt(ref)
        with self._lock:
            self.contention[ref.collection] += 1
        tally = _current_tally.get()
        if tally is not None:
            tally.contended += 1

    def _attempt(self, ref: DocRef) -> None:
        second = int(self._clock())
        with self._lock:
            if self.timeline is not None:
                self.timeline[(second, ref.path)] += 1
            if len(self._rate) >= self._max_docs and ref.path not in self._rate:
                self._rate.clear()
            entry = self._rate.setdefault(ref.path, [second, 0, 0, second])
            if entry[0] != second:
                entry[0], entry[1] = second, 0
            entry[1] += 1
            if entry[1] > entry[2]:
                entry[2], entry[3] = entry[1], second

    def called(self) -> None:
        """One round trip to Firestore (counted per tally: the sequential calls a request makes)."""
        tally = _current_tally.get()
        if tally is not None:
            tally.round_trips += 1

    def queried(self, shape: QueryShape) -> None:
        with self._lock:
            self.shapes.add(shape)

    def hottest(self, top: int = 10) -> list[tuple[str, int]]:
        """Documents by their peak write attempts (refused ones included) within one second, most first."""
        with self._lock:
            ranked = sorted(((path, e[2]) for path, e in self._rate.items()), key=lambda pe: -pe[1])
        return ranked[:top]

    def summary(self, top: int = 10) -> dict:
        """Reads and writes by collection and the hottest documents, as JSON-ready data."""
        hottest = self.hottest(top)
        with self._lock:
            return {"reads": dict(self.reads), "writes": dict(self.writes), "contention": dict(self.contention),
                    "peak_writes_per_second": [{"doc": path, "writes": n} for path, n in hottest]}

    @contextmanager
    def tally(self) -> Iterator[Tally]:
        """Count the calls made in this context (and in threads started from a copy of it)."""
        tally = Tally()
        token = _current_tally.set(tally)
        try:
            yield tally
        finally:
            _current_tally.reset(token)


# ---- the gateway ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """What a write answered: the values of its field transforms (e.g. a counter after `increment`)."""

    transforms: tuple[int | float, ...] = ()


class Db:
    """Firestore for one deployable: every call with an overall deadline, every call accounted in `ledger`."""

    def __init__(self, client: firestore.Client, *, timeout_s: float = 10.0, ledger: Ledger | None = None):
        self._client = client
        self._deadline = deadline(timeout_s)
        self.ledger = ledger or Ledger()

    # references
    def _ref(self, ref: DocRef):
        return self._client.document(ref.path)

    def _snapshot(self, ref: DocRef, raw) -> Snapshot:
        return Snapshot(ref=ref, data=raw.to_dict() if raw.exists else None,
                        update_time=raw.update_time if raw.exists else None, _raw=raw)

    def _call(self, timeout_s: float | None) -> dict:
        return deadline(timeout_s) if timeout_s is not None else self._deadline

    # reads
    def get(self, ref: DocRef, *, timeout_s: float | None = None) -> Snapshot:
        self.ledger.called()
        raw = self._ref(ref).get(**self._call(timeout_s))
        self.ledger.read(ref.collection)
        return self._snapshot(ref, raw)

    def get_all(self, refs: Sequence[DocRef]) -> list[Snapshot]:
        """The documents in the order asked (absent ones with `data` None); one round trip."""
        if not refs:
            return []
        by_path = {ref.path: ref for ref in refs}
        self.ledger.called()
        found = {raw.reference.path: raw for raw in self._client.get_all([self._ref(r) for r in by_path.values()],
                                                                          **self._deadline)}
        for ref in by_path.values():
            self.ledger.read(ref.collection)
        return [self._snapshot(ref, found[ref.path]) if ref.path in found else Snapshot(ref=ref, data=None)
                for ref in refs]

    def _query(self, query: Query):
        if query.group:
            built = self._client.collection_group(query.collection)
        else:
            built = self._client.collection(*query.parent, query.collection)
        for field_name, op, value in query.filters:
            built = built.where(filter=FieldFilter(field_name, op, value))
        for field_name, direction in query.orders:
            built = built.order_by(field_name, direction=firestore.Query.DESCENDING if direction == "desc"
                                   else firestore.Query.ASCENDING)
        if query.after is not None:
            built = built.start_after(query.after._raw)
        elif query.after_id is not None:
            built = built.start_after({"__name__": query.after_id})
        if query.limit_to is not None:
            built = built.limit(query.limit_to)
        return built

    def _scope(self, query: Query) -> str:
        return query.shape().collection

    def stream(self, query: Query) -> list[Snapshot]:
        shape = query.shape()
        self.ledger.queried(shape)
        self.ledger.called()
        parent = query.parent
        snaps = []
        with _needs_index(shape):
            for raw in self._query(query).stream(**self._deadline):
                segments = (tuple(raw.reference.path.split("/")) if query.group
                            else (*parent, query.collection, raw.id))
                snaps.append(self._snapshot(DocRef(segments), raw))
        self.ledger.read(self._scope(query), max(1, len(snaps)), kind="query")  # Firestore bills one for none
        return snaps

    def aggregate(self, query: Query, *aggregations: tuple[str, str | None, str]) -> dict[str, Any]:
        """Run aggregations (kind "count" | "sum" | "avg", field, alias) in one round trip: {alias: value}."""
        built = self._query(query)
        agg = None
        for kind, field_name, alias in aggregations:
            self.ledger.queried(query.shape(aggregate=(kind, field_name)))
            target = agg if agg is not None else built
            if kind == "count":
                agg = target.count(alias=alias)
            elif kind == "sum":
                agg = target.sum(field_name, alias=alias)
            elif kind == "avg":
                agg = target.avg(field_name, alias=alias)
            else:
                raise ValueError(f"unknown aggregation {kind!r}")
        assert agg is not None, "aggregate() needs at least one aggregation"
        self.ledger.called()
        with _needs_index(query.shape(aggregate=(aggregations[0][0], aggregations[0][1]))):
            results = agg.get(**self._deadline)
        self.ledger.read(self._scope(query), 1, kind="query")
        return {result.alias: result.value for result in results[0]}

    def count(self, query: Query) -> int:
        return int(self.aggregate(query, ("count", None, "n"))["n"] or 0)

    def sum(self, query: Query, field_name: str) -> float:
        return float(self.aggregate(query, ("sum", field_name, "v"))["v"] or 0.0)

    # writes
    def create(self, ref: DocRef, data: Mapping[str, Any]) -> bool:
        """Create the document; False when it exists already (exactly one creator wins)."""
        self.ledger.called()
        try:
            self._ref(ref).create(dict(data), **self._deadline)
        except gexc.Conflict:
            self.ledger.read(ref.collection, kind="conflict")  # a failed create costs like a read
            self.ledger.contended(ref)
            return False
        self.ledger.wrote(ref)
        return True

    def set(self, ref: DocRef, data: Mapping[str, Any], *, merge: bool = False) -> Written:
        self.ledger.called()
        result = self._ref(ref).set(dict(data), merge=merge, **self._deadline)
        self.ledger.wrote(ref)
        return _written(result)

    def update(self, ref: DocRef, data: Mapping[str, Any], *, if_unchanged: Snapshot | None = None) -> bool:
        """Update fields; with `if_unchanged`, only when the document did not change since that read (False when
        it did). Raises Missing when there is no such document."""
        options = self._precondition(if_unchanged)
        self.ledger.called()
        try:
            self._ref(ref).update(dict(data), **options, **self._deadline)
        except gexc.FailedPrecondition:
            self.ledger.contended(ref)
            return False
        except gexc.NotFound as exc:
            raise Missing(ref.path) from exc
        self.ledger.wrote(ref)
        return True

    def delete(self, ref: DocRef, *, if_unchanged: Snapshot | None = None) -> bool:
        self.ledger.called()
        try:
            self._ref(ref).delete(**self._precondition(if_unchanged), **self._deadline)
        except gexc.FailedPrecondition:
            return False
        self.ledger.wrote(ref)
        return True

    def _precondition(self, snapshot: Snapshot | None) -> dict:
        if snapshot is None:
            return {}
        if snapshot.update_time is None:
            return {"option": self._client.write_option(exists=False)}
        return {"option": self._client.write_option(last_update_time=snapshot.update_time)}

    def batch(self) -> Batch:
        return Batch(self)

    def ping(self, ref: DocRef, timeout_s: float = 5.0) -> None:
        """A cheap read that fails when Firestore is unreachable."""
        self.get(ref, timeout_s=timeout_s)


class Batch:
    """Writes committed atomically: all or none. A conditional write whose document changed fails the batch."""

    def __init__(self, db: Db):
        self._db = db
        self._batch = db._client.batch()
        self._refs: list[DocRef] = []

    def set(self, ref: DocRef, data: Mapping[str, Any], *, merge: bool = False) -> Batch:
        self._batch.set(self._db._ref(ref), dict(data), merge=merge)
        self._refs.append(ref)
        return self

    def update(self, ref: DocRef, data: Mapping[str, Any], *, if_unchanged: Snapshot | None = None) -> Batch:
        self._batch.update(self._db._ref(ref), dict(data), **self._db._precondition(if_unchanged))
        self._refs.append(ref)
        return self

    def create(self, ref: DocRef, data: Mapping[str, Any]) -> Batch:
        self._batch.create(self._db._ref(ref), dict(data))
        self._refs.append(ref)
        return self

    def commit(self) -> bool:
        """False when a precondition failed (a conditional document changed, or a created one exists)."""
        self._db.ledger.called()
        try:
            self._batch.commit(**self._db._deadline)
        except (gexc.FailedPrecondition, gexc.Conflict):
            for ref in self._refs:
                self._db.ledger.contended(ref)
            return False
        for ref in self._refs:
            self._db.ledger.wrote(ref)
        return True


@contextmanager
def _needs_index(shape: QueryShape) -> Iterator[None]:
    """A query's FAILED_PRECONDITION is a missing index (queries have no other precondition): say which shape."""
    try:
        yield
    except gexc.FailedPrecondition as exc:
        raise IndexMissing(shape, getattr(exc, "message", None) or str(exc)) from exc


def _written(result) -> Written:
    values = getattr(result, "transform_results", None) or ()
    return Written(transforms=tuple(getattr(v, "integer_value", 0) or getattr(v, "double_value", 0) for v in values))
