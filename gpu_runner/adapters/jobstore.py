"""Firestore adapter of the runner: claims jobs with a lease, renews it, records progress, and writes the
results it owns (variant documents, the prompt index's variant list, the job outcome).

Fencing: every write to a job this runner holds (renew, progress, stage, variant, finish, release) reads the job,
checks the lease is still ours (owner and the generation we claimed) and writes only if the document did not change
in between (its update time). A runner that paused past its lease and wakes up can change nothing, and a terminal
job's status, stage, progress and result never change again."""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog
from pydantic import ValidationError

from gpu_runner.errors import InvalidJob, InvalidMessage, JobNotFound, LeaseLost, TransientError
from gpu_runner.leasing import ClaimDecision, decide_claim, lease_expired
from schemas import names
from schemas._base import firestore_dict, utcnow
from schemas.documents import VariantDoc
from schemas.jobs import TERMINAL_STATUSES, JobDoc, JobError, JobMetrics, JobPreview, JobStatus, JobType
from soul_common import firestore as fs
from soul_common import reservations, retention, rollups

log = structlog.get_logger(__name__)

_OPTIMISTIC_RETRIES = 5
_MAX_TRACKED = 4096  # jobs whose last write time this runner remembers
# Weight of a new sample in the moving averages of measured pace.
PACE_WEIGHT = 0.2


class JobStore:
    def __init__(self, db: fs.Db, runner_id: str, lease: timedelta, *,
                 job_retention: timedelta = retention.JOB_RETENTION, renew_every: timedelta | None = None):
        self._db = db
        self._job_retention = job_retention  # a finished job's TTL (soul_common/retention.py)
        self._runner_id = runner_id
        self._lease = lease
        # A beat writes when the lease was last extended this long ago (default a sixth of the lease: 10 s of 60).
        self._renew_every = renew_every if renew_every is not None else lease / 6
        self._held: dict[str, int] = {}  # job id -> lease generation we claimed
        self._pace: dict | None = None  # this runner's pace document as last written
        self._locks = [threading.RLock() for _ in range(16)]  # per job (striped): our writers take turns
        self._written: dict[str, float] = {}  # job id -> when (monotonic) this runner last wrote its document

    def last_write(self, job_id: str) -> float | None:
        """When (time.monotonic) this runner last wrote the job's document, or None: the progress writer keeps its
        advisory writes at least a pace gap after it, so a job's lifecycle writes and ticks never crowd one
        second (gpu_runner/stages/progress.py)."""
        return self._written.get(job_id)

    def _wrote(self, job_id: str) -> None:
        if len(self._written) >= _MAX_TRACKED and job_id not in self._written:
            self._written.clear()  # bounded: a runner holds a few jobs at a time; stale entries only pace less
        self._written[job_id] = time.monotonic()

    @staticmethod
    def _ref(job_id: str) -> fs.DocRef:
        return fs.doc(names.JOBS, job_id)

    def _read(self, job_id: str) -> tuple[fs.Snapshot, JobDoc]:
        snap = self._db.get(self._ref(job_id))
        if not snap.exists:
            raise JobNotFound(f"job {job_id} has no document")
        try:
            return snap, JobDoc.model_validate(snap.data)
        except ValidationError as exc:
            raise InvalidJob(f"job {job_id} document is invalid: {exc.errors(include_url=False)[0]['msg']}") from exc

    def _conditional(self, job_id: str, change: Callable[[JobDoc, datetime], dict | None],
                     also: Callable[[fs.Batch, JobDoc], None] | None = None) -> JobDoc | None:
        """Read the job, let `change` compute the update (None = nothing to do), write it only if the document
        did not change in between; retry a few times on a lost race. `also(batch, changed job)` adds writes that
        must land in the same commit as the update, or not at all. This runner's own writers of one job (the
        progress thread, the heartbeat, the finish) take turns, so they never make each other retry."""
        with self._job_lock(job_id):
            return self._conditional_unlocked(job_id, change, also)

    def _job_lock(self, job_id: str) -> threading.RLock:
        return self._locks[zlib.crc32(job_id.encode()) % len(self._locks)]

    def _conditional_unlocked(self, job_id: str, change: Callable[[JobDoc, datetime], dict | None],
                              also: Callable[[fs.Batch, JobDoc], None] | None = None) -> JobDoc | None:
        for _ in range(_OPTIMISTIC_RETRIES):
            snap, job = self._read(job_id)
            now = utcnow()
            update = change(job, now)
            if update is None:
                return job
            update["updated_at"] = now
            changed = job.model_copy(update=update)
            if also is None:
                written = self._db.update(snap.ref, update, if_unchanged=snap)
            else:
                batch = self._db.batch().update(snap.ref, update, if_unchanged=snap)
                also(batch, changed)
                written = batch.commit()
            if not written:
                continue
            self._wrote(job_id)
            return changed
        raise TransientError(f"job {job_id} kept changing under us")

    def claim(self, job_id: str, expected_type: JobType | str) -> tuple[ClaimDecision, JobDoc]:
        """Take the lease if the rules allow. A message whose type is not its job's is refused before anything
        is written (InvalidMessage): a forged or corrupted message must not touch someone else's job."""
        decided: dict[str, ClaimDecision] = {}

        def change(job: JobDoc, now: datetime) -> dict | None:
            if job.type != JobType(expected_type):
                raise InvalidMessage(f"message says {JobType(expected_type)} but job {job.job_id} is {job.type}")
            decided["d"] = decide_claim(job, self._runner_id, now)
            if decided["d"] is ClaimDecision.CLAIM and self._owns(job) and not lease_expired(job, now):
                decided["d"] = ClaimDecision.HELD_ELSEWHERE  # a duplicate delivery: another slot of ours runs it
            if decided["d"] is not ClaimDecision.CLAIM:
                return None
            return {
                "status": JobStatus.RUNNING.value,
                "stage": "starting",
                "lease_owner": self._runner_id,
                "lease_generation": job.lease_generation + 1,
                "lease_expires_at": now + self._lease,
                "attempts": job.attempts + 1,
                "started_at": job.started_at or now,
                "error": None,
            }

        job = self._conditional(job_id, change)
        assert job is not None
        if decided["d"] is ClaimDecision.CLAIM:
            self._held[job_id] = job.lease_generation
        return decided["d"], job

    def renew(self, job_id: str) -> bool:
        """Keep our lease; returns whether a cancel was requested. Raises LeaseLost if the job is not ours.
        Coalesced with progress: every progress write extends the lease too, so a beat writes only when no write
        of ours extended it for `renew_every` (a beat always reads, which is how a cancel is noticed)."""

        def change(job: JobDoc, now: datetime) -> dict | None:
            self._assert_owner(job)
            extended = job.lease_expires_at
            if extended is not None and extended - now > self._lease - self._renew_every:
                return None  # a recent write of ours (progress, stage) already renewed it
            return {"lease_expires_at": now + self._lease}

        job = self._conditional(job_id, change)
        return bool(job and job.cancel_requested)

    def progress(self, job_id: str, progress: float, stage: str, eta_seconds: float | None,
                 preview: JobPreview | None = None) -> None:
        """Fenced like every other write: a progress tick landing after the finish (or after another runner took
        the job) raises LeaseLost instead of making a finished job look half done. A preview rides on the tick.
        It renews the lease in the same write (one write per tick, not a progress write and a renewal)."""

        def change(job: JobDoc, now: datetime) -> dict | None:
            self._assert_owner(job)
            update = {"progress": round(min(max(progress, 0.0), 1.0), 4), "stage": stage, "eta_seconds": eta_seconds,
                      "lease_expires_at": now + self._lease}
            if preview is not None:
                update["preview"] = firestore_dict(preview)
            return update

        self._conditional(job_id, change)

    def finish(self, job_id: str, status: JobStatus, *, result=None, error: JobError | None = None,
               metrics: JobMetrics | None = None) -> JobDoc:
        def change(job: JobDoc, now: datetime) -> dict | None:
            self._assert_owner(job)
            update = {
                "status": status.value,
                "stage": status.value,
                "finished_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
                "eta_seconds": 0.0,
                **retention.expires(names.JOBS, now, self._job_retention),
                "preview": None,  # the finished image (or its absence) replaces any preview
            }
            if status is JobStatus.SUCCEEDED:
                update["progress"] = 1.0
                update["result"] = None if result is None else firestore_dict(result)
            if error is not None:
                update["error"] = firestore_dict(error)
            if metrics is not None:
                update["metrics"] = firestore_dict(metrics)
            return update

        def rollup(batch: fs.Batch, job: JobDoc) -> None:
            finished_at = job.finished_at or utcnow()
            rollups.add_job(batch, tenant=job.tenant, job_type=str(job.type), succeeded=status is JobStatus.SUCCEEDED,
                            gpu_seconds=metrics.gpu_seconds if metrics is not None else None,
                            finished_at=finished_at, writer=self._runner_id)
            reservations.settle_in(batch, _reservation(job), finished_at)

        # The usage rollups (soul_common/rollups.py) and the return of the job's GPU-seconds reservation
        # (soul_common/reservations.py) ride in the finishing commit: a job is in the sums exactly when it is
        # finished, and no longer reserved, even if this runner dies right after.
        job = self._conditional(job_id, change, also=rollup)
        assert job is not None
        self._held.pop(job_id, None)
        self._written.pop(job_id, None)
        return job

    def fail_unowned(self, job_id: str, error: JobError) -> bool:
        """Record a job failed because its (parsed, valid) message is being given up on; returns whether it did.
        Only when nobody else holds a live lease and the job is not terminal. Works on the raw document: a job
        whose document no longer validates must still end as failed, not stay queued forever."""
        for _ in range(_OPTIMISTIC_RETRIES):
            snap = self._db.get(self._ref(job_id))
            raw = snap.data or {}
            if not snap.exists or raw.get("status") in {s.value for s in TERMINAL_STATUSES}:
                return False
            if _held_by_other(raw, self._runner_id, utcnow()):
                return False
            now = utcnow()
            update = {"status": JobStatus.FAILED.value, "stage": "failed", "finished_at": now, "updated_at": now,
                      "error": firestore_dict(error), "lease_owner": None, "lease_expires_at": None,
                      **retention.expires(names.JOBS, now, self._job_retention)}
            if self._db.update(snap.ref, update, if_unchanged=snap):
                self._held.pop(job_id, None)
                reservations.settle(self._db, raw.get("gpu_reservation"), now)
                return True
        return False

    def release(self, job_id: str, error: JobError) -> None:
        """Give a job back after a transient failure so the redelivered message can claim it at once."""

        def change(job: JobDoc, now: datetime) -> dict | None:
            if not self._owns(job):
                return None
            return {"status": JobStatus.QUEUED.value, "stage": "retrying", "lease_owner": None,
                    "lease_expires_at": None, "error": firestore_dict(error)}

        self._conditional(job_id, change)
        self._held.pop(job_id, None)

    def forget(self, job_id: str, generation: int) -> None:
        """Drop our claim record of a job we lost (only that claim: another slot may have claimed it since)."""
        if self._held.get(job_id) == generation:
            del self._held[job_id]

    def get(self, job_id: str) -> JobDoc | None:
        try:
            return self._read(job_id)[1]
        except (JobNotFound, InvalidJob):
            return None

    def mark_event_published(self, job_id: str) -> None:
        self._db.update(self._ref(job_id), {"event_published_at": utcnow()})

    def _owns(self, job: JobDoc) -> bool:
        return (
            job.status == JobStatus.RUNNING
            and job.lease_owner == self._runner_id
            and job.lease_generation == self._held.get(job.job_id)
        )

    def _assert_owner(self, job: JobDoc) -> None:
        if not self._owns(job):
            raise LeaseLost(
                f"job {job.job_id} is {job.status} held by {job.lease_owner} (generation {job.lease_generation}),"
                f" not {self._runner_id} (generation {self._held.get(job.job_id)})"
            )

    def record_pace(self, device: str, **measured: float) -> None:
        """Fold measured figures (e.g. image_seconds_per_step) into this runner's moving averages, for estimates.
        One document per runner (`runner_stats/{runner id}`, with its device), written by that runner alone: a
        fleet of one device type never shares a hot pace document. The runner keeps its averages in memory after
        the first read, so a sample costs one write."""
        ref = fs.doc(names.RUNNER_STATS, _device_key(self._runner_id))
        if self._pace is None:
            self._pace = dict(self._db.get(ref).data or {})
        current = self._pace
        now = utcnow()
        update = {"device": device, "runner_id": self._runner_id, "samples": int(current.get("samples", 0)) + 1,
                  "updated_at": now, **retention.expires(names.RUNNER_STATS, now)}
        for field, value in measured.items():
            previous = current.get(field)
            update[field] = value if previous is None else round(previous + PACE_WEIGHT * (value - previous), 6)
        self._db.set(ref, update, merge=True)
        current.update(update)

    # results the runner owns
    def save_variant(self, job_id: str, variant: VariantDoc) -> None:
        """Idempotent: the variant id was fixed when the job was created, so a re-run writes the same document.
        Fenced: one atomic batch with a conditional touch of the job we hold, so a stale runner writes nothing."""
        with self._job_lock(job_id):
            self._save_variant(job_id, variant)

    def _save_variant(self, job_id: str, variant: VariantDoc) -> None:
        for _ in range(_OPTIMISTIC_RETRIES):
            snap, job = self._read(job_id)
            self._assert_owner(job)
            now = utcnow()
            batch = self._db.batch().update(self._ref(job_id), {"stage": "saving", "updated_at": now},
                                            if_unchanged=snap)
            add_variant_writes(batch, variant, now)
            if batch.commit():
                self._wrote(job_id)
                return
        raise TransientError(f"job {job_id} kept changing under us")


def _reservation(job: JobDoc) -> dict | None:
    return job.gpu_reservation.model_dump() if job.gpu_reservation is not None else None


def add_variant_writes(batch: fs.Batch, variant: VariantDoc, now: datetime) -> None:
    """The variant document and its place in the prompt index, added to `batch` (one atomic commit)."""
    batch.set(fs.doc(names.VARIANTS, variant.variant_id), firestore_dict(variant))
    batch.set(fs.doc(names.PROMPTS, variant.pk),
              {"variant_ids": fs.array_union([variant.variant_id]),
               "variant_indices": fs.array_union([variant.variant_index]), "updated_at": now}, merge=True)


def _held_by_other(raw: dict, runner_id: str, now: datetime) -> bool:
    """Whether another runner holds a live lease on this raw job document."""
    owner, expires = raw.get("lease_owner"), raw.get("lease_expires_at")
    if raw.get("status") != JobStatus.RUNNING.value or owner in (None, runner_id):
        return False
    return not isinstance(expires, datetime) or expires > now


def _device_key(device: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", device).strip("-")[:100] or "unknown"
