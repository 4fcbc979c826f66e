"""The backfill's work on Firestore (`python -m functions.backfill` is its command line): brings job documents
written before today's shape up to it, once, after an upgrade. Resumable and idempotent: it scans `jobs` in id
order a page at a time (reporting the cursor as it goes), and every write is a create of a document whose id is
fixed, or a field that only it sets, so running it twice, or two at once, writes nothing more.

What it does to each job:
- **Interest records** (issue 17): jobs created before interest documents kept every asker on the job itself
  (`tenants`, `requesters`, `requester_keys`); listings (`GET /tasks`) read `jobs/{id}/interest/*` now, so those
  jobs were missing from them. Each (tenant) and (tenant, end user) on the job gets its record.
- **Expiry** (issue 18): a job that finished before finished jobs got `expires_at` never expires; it gets
  `finished_at + job retention` (`SOUL_JOB_RETENTION_DAYS`), like a job finishing today.

Reads: one per job (paged queries), plus one round trip per job with askers to see which records exist."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from pydantic import ValidationError

from functions.adapters.firestore.interest import InterestRecord, InterestStore
from functions.core.tenants import scoped_user
from schemas import names
from schemas._base import utcnow
from schemas.jobs import TERMINAL_STATUSES, JobDoc
from soul_common import firestore as fs
from soul_common import retention


@dataclass
class Progress:
    jobs: int = 0
    invalid: int = 0  # documents that are not jobs of any known shape: left alone, counted
    interest_created: int = 0
    expiry_set: int = 0
    cursor: str | None = None  # the last job id done: `--after` resumes here


def askers(job: JobDoc) -> list[InterestRecord]:
    """Everyone the job document itself names as waiting: each tenant, and each tenant's end users."""
    tenants = dict.fromkeys([*([job.tenant] if job.tenant else []), *job.tenants, *job.requesters])
    records = [InterestRecord(tenant) for tenant in tenants]
    for tenant, users in job.requesters.items():
        records += [InterestRecord(tenant, user, scoped_user(tenant, user)) for user in dict.fromkeys(users)]
    return records


def backfill_job(db: fs.Db, store: InterestStore, job: JobDoc, raw: dict, retain: timedelta, *,
                 dry_run: bool) -> tuple[int, int]:
    """(interest records created, 1 if the expiry was set) for one job (`raw`: its stored fields)."""
    records = askers(job)
    created = 0
    if records:
        refs = [store.ref(job.job_id, r.tenant, r.user_id) for r in records]
        now = utcnow()
        for record, snap in zip(records, db.get_all(refs), strict=True):
            if snap.exists:
                continue
            if dry_run or db.create(snap.ref, record.document(job, now, retain)):
                created += 1
    expiry = 0
    if job.status in TERMINAL_STATUSES and job.finished_at is not None \
            and raw.get(retention.TTL_FIELD) is None:
        if not dry_run:
            db.update(fs.doc(names.JOBS, job.job_id), retention.expires(names.JOBS, job.finished_at, retain))
        expiry = 1
    return created, expiry


def run(db: fs.Db, *, page_size: int = 300, after: str | None = None, retain: timedelta = retention.JOB_RETENTION,
        dry_run: bool = False, report=None) -> Progress:
    store = InterestStore(db)
    progress = Progress(cursor=after)
    while True:
        query = fs.collection(names.JOBS).order_by("__name__").limit(page_size)
        if progress.cursor:
            query = query.start_after_id(progress.cursor)
        snaps = db.stream(query)
        for snap in snaps:
            progress.jobs += 1
            try:
                job = JobDoc.model_validate(snap.data)
            except ValidationError:
                progress.invalid += 1
                continue
            created, expiry = backfill_job(db, store, job, snap.data or {}, retain, dry_run=dry_run)
            progress.interest_created += created
            progress.expiry_set += expiry
        if snaps:
            progress.cursor = snaps[-1].id
            if report is not None:
                report(progress)
        if len(snaps) < page_size:
            return progress


def open_db(client, timeout_s: float) -> fs.Db:
    """The gateway over a Firestore client the command line made (functions/adapters/clients.py)."""
    return fs.Db(client, timeout_s=timeout_s)
