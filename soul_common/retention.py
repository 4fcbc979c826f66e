"""How long each short-lived kind of document lives, in one table: the collection, the timestamp field a
Firestore TTL policy deletes it by (`infra/terraform/firestore.tf` `firestore_fields` with `ttl = true`), how long
after it is written, and who writes the field. `tests/unit/test_retention.py` checks the table and the Terraform
against each other; tests/integration/test_bounded_storage.py checks that the writers write the field.

TTL deletes a document, never its sub-collections: a kind with children (a job's webhooks, a webhook's
deliveries) has a TTL of its own, no shorter than its parent's. Deletion happens within about a day after the
time (Firestore's documentation), so every reader that cares (idempotency) still checks the time itself.

What is never deleted: prompts, variants, users' seen marks, styles (the product's memory), the usage rollups
(`usage/{tenant}/days`, billing history, small: one document per tenant, day and shard)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas import names

TTL_FIELD = "expires_at"

# A finished job (and its head) is kept this long by default: `GET /tasks/{id}` and webhooks' redeliveries read
# it; the runners' and functions' settings can change it (`job_retention_days`).
JOB_RETENTION = timedelta(days=30)
# An interest record (jobs/{id}/interest/*) is written when its job is created or joined, before the job finishes;
# it lives the job's retention plus this margin, so it never expires before its job (a listing skips a job that is
# already gone).
INTEREST_MARGIN = timedelta(days=2)
# A runner's pace document (runner_stats/{runner}): rewritten with every job it finishes; a runner gone for a day
# is forgotten (and estimates read only the runners seen within this window).
RUNNER_STATS_LIFETIME = timedelta(days=1)


@dataclass(frozen=True)
class Expiring:
    collection: str  # collection id (a TTL policy applies to every collection of that id)
    lifetime: timedelta  # after the write that sets the field
    writer: str  # where the field is written


EXPIRING: tuple[Expiring, ...] = (
    Expiring(names.IDEMPOTENCY, timedelta(hours=24), "functions/services/idempotency.py (its own ttl setting)"),
    Expiring("rate", timedelta(hours=1), "functions/adapters/firestore/quotas.py spend (token-bucket shards)"),
    Expiring("counters", timedelta(days=2), "functions/services/quotas.py (hourly and daily quota counters)"),
    Expiring(names.JOBS, JOB_RETENTION, "when a job finishes: gpu_runner/adapters/jobstore.py, the reconciler, a "
             "cancel (functions/services/tasks.py)"),
    Expiring(names.JOB_HEADS, JOB_RETENTION, "functions/adapters/firestore/jobs.py advance_head"),
    Expiring(names.WEBHOOKS, JOB_RETENTION + timedelta(days=1), "functions/adapters/firestore/webhooks.py register"),
    Expiring(names.DELIVERIES, JOB_RETENTION + timedelta(days=1), "functions/adapters/firestore/webhooks.py"),
    Expiring(names.WEBHOOK_SLOTS, JOB_RETENTION + timedelta(days=1), "functions/adapters/firestore/webhooks.py "
             "claim_slot"),
    Expiring("askers", timedelta(days=2), "functions/adapters/firestore/warm_pool.py record_asker"),
    # a tenant's warm-pool document for a key that holds only today's counter (not a setting)
    Expiring("tenants", timedelta(days=2), "functions/adapters/firestore/warm_pool.py count_made (cleared by "
             "set_explicit_ahead)"),
    # who waits on a job: outlives the job it names by the longest a job waits and runs before it finishes
    Expiring(names.INTEREST, JOB_RETENTION + INTEREST_MARGIN, "functions/adapters/firestore/interest.py (with "
             "each record)"),
    Expiring(names.RUNNER_STATS, RUNNER_STATS_LIFETIME, "gpu_runner/adapters/jobstore.py record_pace"),
)


def lifetime(collection: str) -> timedelta:
    for kind in EXPIRING:
        if kind.collection == collection:
            return kind.lifetime
    raise KeyError(f"{collection!r} has no TTL in soul_common/retention.py")


def expires(collection: str, now: datetime, retention: timedelta | None = None) -> dict[str, datetime]:
    """The field to write with a document of `collection` (`retention` overrides the table's lifetime)."""
    return {TTL_FIELD: now + (retention if retention is not None else lifetime(collection))}
