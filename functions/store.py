"""Firestore adapter of the functions: reads the dedup index, creates jobs, pages through collections. No
decisions live here; the services decide, this module translates documents to and from schemas/."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_transient_error
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from functions.errors import InvalidInput
from schemas import names
from schemas._base import firestore_dict
from schemas.documents import PromptDoc, RunnerStats, SeenDoc, VariantDoc
from schemas.jobs import JobDoc, JobStatus

_dump = firestore_dict
_RESERVED_ID = re.compile(r"^__.*__$|^\.\.?$")  # ids Firestore reserves: never a cursor we gave out


def deadline(seconds: float) -> dict:
    """Keyword arguments giving a Firestore call an overall deadline: transient errors are retried, but only
    until `seconds` have passed, so with Firestore down a request answers 503 instead of hanging (the client's
    default retries go on for minutes)."""
    return {
        "retry": Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=seconds, predicate=if_transient_error),
        "timeout": seconds,
    }


class Store:
    def __init__(self, db: firestore.Client, timeout: float = 10.0):
        self.db = db
        self.deadline = deadline(timeout)

    # prompts / variants / seen
    def variants_of(self, pk: str) -> list[VariantDoc]:
        query = self.db.collection(names.VARIANTS).where(filter=FieldFilter("pk", "==", pk))
        return [VariantDoc.model_validate(snap.to_dict()) for snap in query.stream(**self.deadline)]

    def variant(self, variant_id: str) -> VariantDoc | None:
        snap = self.db.collection(names.VARIANTS).document(variant_id).get(**self.deadline)
        return VariantDoc.model_validate(snap.to_dict()) if snap.exists else None

    def variants_page(self, pk: str | None, page_size: int, cursor: str | None) -> tuple[list[VariantDoc], str | None]:
        """Variants ordered by id (ULIDs: creation order), of one pk or of all."""
        coll = self.db.collection(names.VARIANTS)
        query = coll.where(filter=FieldFilter("pk", "==", pk)) if pk else coll
        snaps = self._page(query.order_by("__name__"), coll, page_size, cursor)
        return [VariantDoc.model_validate(s.to_dict()) for s in snaps[:page_size]], _next(snaps, page_size)

    def _seen(self, user_id: str):
        return self.db.collection(names.USERS).document(user_id).collection(names.SEEN)

    def seen_among(self, user_id: str, variant_ids: Sequence[str]) -> set[str]:
        if not variant_ids:
            return set()
        seen = self._seen(user_id)
        refs = [seen.document(v) for v in variant_ids]
        return {snap.id for snap in self.db.get_all(refs, **self.deadline) if snap.exists}

    def mark_seen(self, user_id: str, doc: SeenDoc) -> SeenDoc:
        """Idempotent: the first mark wins and keeps its time."""
        ref = self._seen(user_id).document(doc.variant_id)
        try:
            ref.create(_dump(doc), **self.deadline)
            return doc
        except gexc.Conflict:
            return SeenDoc.model_validate(ref.get(**self.deadline).to_dict())

    def seen_page(self, user_id: str, page_size: int, cursor: str | None) -> tuple[list[SeenDoc], str | None]:
        coll = self._seen(user_id)
        snaps = self._page(coll.order_by("__name__"), coll, page_size, cursor)
        return [SeenDoc.model_validate(s.to_dict()) for s in snaps[:page_size]], _next(snaps, page_size)

    def ensure_prompt(self, doc: PromptDoc) -> None:
        try:
            self.db.collection(names.PROMPTS).document(doc.pk).create(_dump(doc), **self.deadline)
        except gexc.Conflict:
            pass  # the index entry exists; its variant list is the runner's to extend

    def recent_places(self, user_id: str) -> list[str]:
        snap = self.db.collection(names.USERS).document(user_id).get(**self.deadline)
        return list((snap.to_dict() or {}).get("recent_places", [])) if snap.exists else []

    def set_recent_places(self, user_id: str, places: list[str]) -> None:
        user = self.db.collection(names.USERS).document(user_id)
        user.set({"recent_places": places}, merge=True, **self.deadline)

    # jobs
    def create_job(self, job: JobDoc) -> bool:
        """Create the job document; False when a job of that id already exists (the other creator won)."""
        try:
            self.jobs().document(job.job_id).create(_dump(job), **self.deadline)
        except gexc.Conflict:
            return False
        return True

    def jobs(self):
        return self.db.collection(names.JOBS)

    def job(self, job_id: str) -> JobDoc | None:
        snap = self.jobs().document(job_id).get(**self.deadline)
        return JobDoc.model_validate(snap.to_dict()) if snap.exists else None

    def mark_published(self, job_id: str, when: datetime) -> None:
        self.jobs().document(job_id).update({"published_at": when}, **self.deadline)

    def jobs_page(
        self, filters: dict[str, str], page_size: int, cursor: str | None, contains: tuple[str, str] | None = None
    ) -> tuple[list[JobDoc], str | None]:
        """Newest first, with equality filters and at most one array-contains filter (composite indexes for
        these are in infra/)."""
        query = self.jobs()
        for field, value in filters.items():
            query = query.where(filter=FieldFilter(field, "==", value))
        if contains is not None:
            query = query.where(filter=FieldFilter(contains[0], "array_contains", contains[1]))
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING).order_by(
            "__name__", direction=firestore.Query.DESCENDING
        )
        snaps = self._page(query, self.jobs(), page_size, cursor)
        return [JobDoc.model_validate(s.to_dict()) for s in snaps[:page_size]], _next(snaps, page_size)

    def count_jobs(self, field: str, value: str) -> int:
        result = self.jobs().where(filter=FieldFilter(field, "==", value)).count().get(**self.deadline)
        return int(result[0][0].value)

    def count_queued_before(self, job: JobDoc) -> int:
        """Queued jobs of `job`'s lane created before it: its place in line (0: next)."""
        query = (
            self.jobs()
            .where(filter=FieldFilter("status", "==", JobStatus.QUEUED.value))
            .where(filter=FieldFilter("lane", "==", str(job.lane)))
            .where(filter=FieldFilter("created_at", "<", job.created_at))
        )
        return int(query.count().get(**self.deadline)[0][0].value)

    def recent_finished(self, status: str, limit: int) -> list[JobDoc]:
        query = (
            self.jobs()
            .where(filter=FieldFilter("status", "==", status))
            .order_by("finished_at", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [JobDoc.model_validate(s.to_dict()) for s in query.stream(**self.deadline)]

    def runner_stats(self) -> list[RunnerStats]:
        stats = self.db.collection(names.RUNNER_STATS).stream(**self.deadline)
        return [RunnerStats.model_validate(s.to_dict()) for s in stats]

    def ping(self) -> None:
        """A cheap read that fails when Firestore is unreachable."""
        self.jobs().document("_ready_probe").get(**deadline(5.0))

    def _page(self, query, coll, page_size: int, cursor: str | None) -> list:
        """One page plus one document to tell whether there is more. The cursor is the last document id."""
        if cursor:
            if _RESERVED_ID.match(cursor):
                raise InvalidInput("cursor does not name a position in this list", field="cursor")
            anchor = coll.document(cursor).get(**self.deadline)
            if not anchor.exists:
                raise InvalidInput("cursor does not name a position in this list", field="cursor")
            query = query.start_after(anchor)
        return list(query.limit(page_size + 1).stream(**self.deadline))


def _next(snaps: list, page_size: int) -> str | None:
    return snaps[page_size - 1].id if len(snaps) > page_size else None
