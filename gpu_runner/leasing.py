"""Pure rules of job ownership: may this runner claim a job now, and is a running job's lease expired.
No I/O; `jobstore.py` applies the decisions with conditional writes."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from schemas.jobs import TERMINAL_STATUSES, JobDoc, JobStatus


class ClaimDecision(Enum):
    CLAIM = "claim"
    ALREADY_FINISHED = "already_finished"  # duplicate delivery of a finished job
    HELD_ELSEWHERE = "held_elsewhere"  # another runner's lease is live; its own message will finish the job


def decide_claim(job: JobDoc, runner_id: str, now: datetime) -> ClaimDecision:
    if JobStatus(job.status) in TERMINAL_STATUSES:
        return ClaimDecision.ALREADY_FINISHED
    if job.status == JobStatus.RUNNING and job.lease_owner != runner_id and not lease_expired(job, now):
        return ClaimDecision.HELD_ELSEWHERE
    return ClaimDecision.CLAIM


def lease_expired(job: JobDoc, now: datetime) -> bool:
    return job.lease_expires_at is None or job.lease_expires_at <= now
