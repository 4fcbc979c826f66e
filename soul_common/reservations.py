"""GPU-seconds reserved by jobs in flight, so a tenant's daily GPU-seconds quota also counts the work it has
asked for and not yet been charged for (when only finished jobs counted, 30 concurrent new jobs overshot a 1 s
budget 14 times over).

A creation adds its job's estimated GPU-seconds (in milliseconds) to one shard of the tenant's day counter
`tenants/{tenant}/counters/gpu-{YYYYMMDD}-{shard}` (functions/services/quotas.py, which sums the day's shards
with one aggregation before it admits the next job) and names that shard on the job (`gpu_reservation`). Whoever
ends the job takes the reservation back in the same step: the runner in its finishing commit, a cancel of a
queued job and the reconciler right after their conditional write. The day's actual GPU-seconds come from the
usage rollups (soul_common/rollups.py) as before; charge = actual + still reserved.

A reservation whose settling write is lost (a process dying between the job's end and it) stays until the
counter's day is over: the tenant is refused at most that estimate early, never let past its budget."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from schemas import names
from soul_common import firestore as fs

COUNTERS = "counters"
KEEP = timedelta(days=2)  # the counters' `expires_at` (TTL): a day's reservations matter on that day only


def counter_ref(tenant: str, name: str) -> fs.DocRef:
    return fs.doc(names.TENANTS, tenant, COUNTERS, name)


def _release(reservation: Mapping[str, Any] | None, now: datetime) -> tuple[fs.DocRef, dict] | None:
    if not reservation or not reservation.get("millis"):
        return None
    return (counter_ref(reservation["tenant"], reservation["counter"]),
            {"n": fs.increment(-int(reservation["millis"])), "expires_at": now + KEEP})


def settle_in(batch: fs.Batch, reservation: Mapping[str, Any] | None, now: datetime) -> None:
    """Take a finished job's reservation back in `batch` (the commit that finishes it)."""
    write = _release(reservation, now)
    if write is not None:
        batch.set(*write, merge=True)


def settle(db: fs.Db, reservation: Mapping[str, Any] | None, now: datetime) -> None:
    """Take a job's reservation back on its own (after a conditional write ended the job)."""
    write = _release(reservation, now)
    if write is not None:
        db.set(*write, merge=True)
