"""Job documents as the functions see them: `jobs/{job_id}` (created once by the first asker, with its interest
records; cancels, promotion and webhook wishes recorded later; joiners never write it: functions/adapters/firestore/
interest.py), `job_heads/{first job id}` (which retry of a piece of work is
current), listings and the aggregations over jobs (queue position, counts; GPU-seconds from the usage rollups), and the pace documents
runners write (`runner_stats`). The runner's own writes to a job are in gpu_runner/adapters/jobstore.py."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from functions.adapters.firestore.interest import InterestRecord, InterestStore
from schemas import names
from schemas._base import firestore_dict, utcnow
from schemas.documents import RunnerStats
from schemas.jobs import JobDoc, JobStatus
from soul_common import firestore as fs
from soul_common import reservations, retention, rollups

_CREATION_STRIPES = 64


@dataclass(frozen=True)
class JobVersion:
    """A job as read, with the version a conditional write checks (`JobStore.update_if_unchanged`)."""

    job: JobDoc | None
    snapshot: fs.Snapshot


RUNNER_STATS_READ = 100  # runners' pace documents an estimate reads, at most


class JobStore:
    def __init__(self, db: fs.Db, *, job_retention: timedelta = retention.JOB_RETENTION):
        self._db = db
        self.interest = InterestStore(db, job_retention)  # who waits on a job: its own documents, never the job's
        self._creating = [threading.Lock() for _ in range(_CREATION_STRIPES)]

    def creation_lock(self, job_id: str) -> threading.Lock:
        """Held around "read the job, create it if absent": requests of one instance asking for the same new
        job at once make one create() attempt, not one each (a conflict is a write attempt on that document)."""
        return self._creating[zlib.crc32(job_id.encode()) % _CREATION_STRIPES]

    @staticmethod
    def _ref(job_id: str) -> fs.DocRef:
        return fs.doc(names.JOBS, job_id)

    # one job
    def job(self, job_id: str) -> JobDoc | None:
        snap = self._db.get(self._ref(job_id))
        return JobDoc.model_validate(snap.data) if snap.exists else None

    def read(self, job_id: str) -> JobVersion:
        snap = self._db.get(self._ref(job_id))
        return JobVersion(JobDoc.model_validate(snap.data) if snap.exists else None, snap)

    def create(self, job: JobDoc, interest: InterestRecord | None = None) -> bool:
        """Create the job document (with its creator's interest records, atomically); False when a job of that
        id already exists (the other creator won)."""
        if interest is None:
            return self._db.create(self._ref(job.job_id), firestore_dict(job))
        batch = self._db.batch().create(self._ref(job.job_id), firestore_dict(job))
        self.interest.add_to_batch(batch, job, interest, job.created_at)
        return batch.commit()

    def update(self, job_id: str, update: Mapping) -> bool:
        """Apply `update`; False when the job does not exist."""
        try:
            return self._db.update(self._ref(job_id), update)
        except fs.Missing:
            return False

    def update_if_unchanged(self, version: JobVersion, update: Mapping) -> bool:
        """Apply `update` only if the job did not change since `version` was read."""
        try:
            return self._db.update(self._ref(version.snapshot.id), update, if_unchanged=version.snapshot)
        except fs.Missing:
            return False

    def settle_reservation(self, job: JobDoc, now: datetime) -> None:
        """Give back the GPU-seconds the job reserved at creation (it ended without its runner's finish)."""
        reservations.settle(self._db, job.gpu_reservation.model_dump() if job.gpu_reservation else None, now)

    def mark_published(self, job_id: str, when: datetime) -> None:
        self._db.update(self._ref(job_id), {"published_at": when})

    @staticmethod
    def withdrawal(tenant: str, remaining_tenants: list[str], remaining_keys: list[str], now: datetime) -> dict:
        """The update that takes `tenant`'s interest off a job other tenants still wait on."""
        return {"tenants": remaining_tenants, "requester_keys": remaining_keys, "updated_at": now,
                fs.field_path("requesters", tenant): fs.DELETE_FIELD}

    def want_events(self, job_id: str, events: Iterable[str], already: Iterable[str] = ()) -> None:
        """Ask the runner to publish these live events (start, progress) for the job; nothing is written when
        the job asks for them already (`already`: its `notify` as read), so webhook registrations on a hot job
        write it at most once per kind of event."""
        missing = [e for e in events if e not in set(already)]
        if missing:
            self._db.update(self._ref(job_id), {"notify": fs.array_union(missing)})

    # job heads
    def head(self, base_job_id: str) -> tuple[int, set[int]]:
        """(the current retry, the retries that failed) of the work whose first job is `base_job_id`."""
        data = self._db.get(fs.doc(names.JOB_HEADS, base_job_id)).data or {}
        return int(data.get("next", 0)), set(data.get("failed", []))

    def advance_head(self, base_job_id: str, next_retry: int, failed_retry: int | None = None) -> None:
        """Point the head past a dead retry. Racing writers write the same value, and a stale lower one only costs
        a later request one extra read, so no precondition is needed."""
        now = utcnow()
        update: dict = {"next": next_retry, "updated_at": now, **retention.expires(names.JOB_HEADS, now)}
        if failed_retry is not None:
            update["failed"] = fs.array_union([failed_retry])
        self._db.set(fs.doc(names.JOB_HEADS, base_job_id), update, merge=True)

    # listings and aggregations
    def jobs(self, job_ids: list[str]) -> list[JobDoc]:
        """The jobs named, in that order (missing ones left out): one round trip."""
        snaps = self._db.get_all([self._ref(j) for j in job_ids])
        return [JobDoc.model_validate(s.data) for s in snaps if s.exists]

    def count_by(self, field_name: str, value: str) -> int:
        return self._db.count(fs.collection(names.JOBS).where(field_name, "==", value))

    def count_queued_before(self, job: JobDoc) -> int:
        """Queued jobs of `job`'s lane created before it: its place in line (0: next)."""
        query = (fs.collection(names.JOBS).where("status", "==", JobStatus.QUEUED.value)
                 .where("lane", "==", str(job.lane)).where("created_at", "<", job.created_at))
        return self._db.count(query)

    def recent_finished(self, status: str, limit: int) -> list[JobDoc]:
        query = (fs.collection(names.JOBS).where("status", "==", status)
                 .order_by("finished_at", descending=True).limit(limit))
        return [JobDoc.model_validate(s.data) for s in self._db.stream(query)]

    def gpu_seconds_since(self, tenant: str, start: datetime) -> float:
        """GPU-seconds of this tenant's jobs that finished on the UTC days from `start`'s to today, from the usage
        rollups the runner adds to as jobs finish (one aggregation for one day; soul_common/rollups.py)."""
        first, today = rollups.day_of(start), rollups.day_of(utcnow())
        if first >= today:
            return rollups.gpu_seconds_on(self._db, tenant, today)
        by_day = rollups.days(self._db, tenant, date.fromisoformat(first), date.fromisoformat(today))
        return sum(day["gpu_seconds"] for day in by_day.values())

    # runners' pace and readiness
    def runner_stats(self, *, limit: int = RUNNER_STATS_READ) -> list[RunnerStats]:
        """The runners seen within `retention.RUNNER_STATS_LIFETIME` (their documents expire after it), newest
        first, at most `limit`: a fixed read whatever the size the fleet once had."""
        since = utcnow() - retention.RUNNER_STATS_LIFETIME
        query = fs.collection(names.RUNNER_STATS).where("updated_at", ">=", since) \
            .order_by("updated_at", descending=True).limit(limit)
        return [RunnerStats.model_validate(s.data) for s in self._db.stream(query)]

    def ping(self) -> None:
        """A cheap read that fails when Firestore is unreachable."""
        self._db.ping(self._ref("_ready_probe"))
