"""Who waits on a job: `jobs/{job_id}/interest/{digest}`, one small document per (job, tenant) — the tenant's
marker — and one per (job, tenant, end user), each created once by the request that first records it.

Why not arrays on the job document: a hot cue has hundreds of users joining one job within seconds, and every
`ArrayUnion` on the job was a write to the one document the runner writes conditionally (its lease, progress and
result lost the race to joiners), a document limited to about one sustained write per second and 1 MiB (the
`requesters` arrays reach that after a few thousand joiners, each element an index entry). An interest document
is written once and never contended, and the job document stays bounded: it keeps only the creator's interest
(set at creation) and is written, while it runs, by its runner and a cancel alone.

Listings (`GET /tasks`, by tenant or by end user) query the `interest` collection group (indexes in
infra/terraform/firestore.tf) and read the jobs they name in one round trip.

A tenant that cancels a job others still wait on withdraws: its records stay, stamped `withdrawn_at`, so the task
stays readable to it (and listed) as canceled while the work goes on for the others; a withdrawn marker waits on
nothing (`other_waiting`), and asking again revives the records."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from functions.adapters.firestore.paging import _RESERVED_ID, page
from functions.core.errors import InvalidInput
from schemas import names
from schemas.jobs import JobDoc
from soul_common import firestore as fs
from soul_common import retention

TENANT = "tenant"  # `scope` of a tenant's marker
USER = "user"  # `scope` of one end user's record
_WITHDRAW_BATCH = 400  # documents one cancel stamps per commit (Firestore allows 500 writes per batch)
_MARKERS_READ = 100  # markers a cancel reads to find another tenant still waiting (more: assume one is)


def interest_id(tenant: str, user_id: str | None) -> str:
    """The interest document's id: fixed by who is asking, so recording the same interest twice is one create."""
    return hashlib.sha256(f"{tenant}\0{user_id or ''}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class InterestRecord:
    tenant: str
    user_id: str | None = None
    user_key: str | None = None

    @property
    def scope(self) -> str:
        return USER if self.user_id else TENANT

    def document(self, job: JobDoc, now: datetime, retain: timedelta = retention.JOB_RETENTION) -> dict:
        """`retain`: how long finished jobs are kept; the record outlives its job by `retention.INTEREST_MARGIN`."""
        return {"job_id": job.job_id, "tenant": self.tenant, "scope": self.scope, "user_id": self.user_id,
                "user_key": self.user_key, "type": str(job.type),
                "soul_id": job.soul_id or getattr(job.request, "soul_id", None),  # (older jobs: on the request)
                "created_at": job.created_at, "joined_at": now,
                **retention.expires(names.INTEREST, now, retain + retention.INTEREST_MARGIN)}


class InterestStore:
    def __init__(self, db: fs.Db, retain: timedelta = retention.JOB_RETENTION):
        self._db = db
        self._retain = retain  # finished jobs' retention: each record expires after it (soul_common/retention.py)

    @staticmethod
    def ref(job_id: str, tenant: str, user_id: str | None = None) -> fs.DocRef:
        return fs.doc(names.JOBS, job_id, names.INTEREST, interest_id(tenant, user_id))

    def records_for(self, interest: InterestRecord) -> list[InterestRecord]:
        """The documents one request's interest consists of: the tenant's marker, and its user's record."""
        marker = InterestRecord(interest.tenant)
        return [marker, interest] if interest.user_id else [marker]

    def add_to_batch(self, batch: fs.Batch, job: JobDoc, interest: InterestRecord, now: datetime) -> None:
        """The creator's records, created in the batch that creates the job."""
        for record in self.records_for(interest):
            batch.create(self.ref(job.job_id, record.tenant, record.user_id),
                         record.document(job, now, self._retain))

    def recorded(self, job_id: str, interest: InterestRecord) -> tuple[bool, bool, bool]:
        """(the tenant's marker is live, this user's record is live, one of them is withdrawn): two documents, one
        round trip."""
        refs = [self.ref(job_id, r.tenant, r.user_id) for r in self.records_for(interest)]
        snaps = self._db.get_all(refs)
        live = [snap.exists and not snap.data.get("withdrawn_at") for snap in snaps]
        withdrawn = any(snap.exists and snap.data.get("withdrawn_at") for snap in snaps)
        return live[0], (live[-1] if interest.user_id else live[0]), withdrawn

    def record(self, job: JobDoc, interest: InterestRecord, now: datetime, *, marker: bool,
               revive: bool = False) -> None:
        """Create `interest`'s records on `job` (`marker`: the tenant's marker is live already, per `recorded`):
        what exists is never written again; concurrent first joiners of one tenant may both try its marker, one
        create wins and the others' conflict is harmless. `revive`: the tenant withdrew before and asks again, so
        its records are written afresh."""
        for record in self.records_for(interest):
            if record.scope == TENANT and marker:
                continue
            ref = self.ref(job.job_id, record.tenant, record.user_id)
            document = record.document(job, now, self._retain)
            if revive:
                self._db.set(ref, document)
            else:
                self._db.create(ref, document)

    def visible(self, job_id: str, tenant: str) -> bool:
        """Whether `tenant` waits, or waited, on the job through a join (one read)."""
        return self.marker(job_id, tenant) is not None

    def marker(self, job_id: str, tenant: str) -> dict | None:
        """The tenant's marker on the job (one read): None when it never joined; `withdrawn_at` once it canceled."""
        snap = self._db.get(self.ref(job_id, tenant))
        return snap.data if snap.exists else None

    def first_user(self, job_id: str, tenant: str) -> str | None:
        """One end user of `tenant` waiting on the job (for the task view), or None."""
        query = (fs.collection(names.JOBS, job_id, names.INTEREST).where("tenant", "==", tenant)
                 .where("scope", "==", USER).limit(1))
        snaps = self._db.stream(query)
        return snaps[0].data.get("user_id") if snaps else None

    def other_waiting(self, job_id: str, tenant: str) -> str | None:
        """A tenant other than `tenant` with a live marker on the job, None when there is none (one marker per
        tenant; a cancel is rare, so up to `_MARKERS_READ` of them are read; past that one is assumed to wait,
        unnamed: "")."""
        query = fs.collection(names.JOBS, job_id, names.INTEREST).where("scope", "==", TENANT).limit(_MARKERS_READ)
        snaps = self._db.stream(query)
        waiting = (snap.data["tenant"] for snap in snaps
                   if snap.data.get("tenant") != tenant and not snap.data.get("withdrawn_at"))
        return next(waiting, "" if len(snaps) == _MARKERS_READ else None)

    def withdraw(self, job_id: str, tenant: str, now: datetime) -> int:
        """Stamp every interest record of `tenant` on the job withdrawn (a cancel: rare, so a query here is fine);
        the number stamped."""
        query = fs.collection(names.JOBS, job_id, names.INTEREST).where("tenant", "==", tenant).limit(_WITHDRAW_BATCH)
        stamped = 0
        while True:
            snaps = self._db.stream(query)
            batch = self._db.batch()
            for snap in snaps:
                batch.update(snap.ref, {"withdrawn_at": now})
            if snaps:
                batch.commit()
            stamped += len(snaps)
            if len(snaps) < _WITHDRAW_BATCH:
                return stamped
            query = query.start_after(snaps[-1])

    def page(self, tenant: str, user: tuple[str, str] | None, filters: Mapping[str, str], page_size: int,
             cursor: str | None) -> tuple[list[str], str | None, dict[str, datetime]]:
        """Job ids `tenant` (or its user `(user_id, user_key)`) waits on (or withdrew from), newest job first; the
        cursor is a job id (its interest document is the anchor); and when it withdrew from which of them."""
        query = fs.collection_group(names.INTEREST).where("tenant", "==", tenant)
        if user is not None:
            query = query.where("user_key", "==", user[1])
        else:
            query = query.where("scope", "==", TENANT)
        for field_name, value in filters.items():
            query = query.where(field_name, "==", value)
        query = query.order_by("created_at", descending=True).order_by("__name__", descending=True)
        if cursor and _RESERVED_ID.match(cursor):
            raise InvalidInput("cursor does not name a position in this list", field="cursor")
        anchor = self.ref(cursor, tenant, user[0] if user else None) if cursor else None
        snaps, after = page(self._db, query, anchor, page_size,
                            member=lambda data: all(data.get(f) == v for f, v in filters.items()))
        ids = [s.data["job_id"] for s in snaps]
        withdrawn = {s.data["job_id"]: s.data["withdrawn_at"] for s in snaps if s.data.get("withdrawn_at")}
        return ids, (ids[-1] if after is not None else None), withdrawn
