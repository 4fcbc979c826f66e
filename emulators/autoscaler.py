"""A local stand-in for the runner MIG's autoscaler (issue 10): between `min` and `max` runner processes, sized
on the backlog, scaled in only after a runner has been idle for `idle_timeout_s`, with SIGTERM (the runner drains).

Backlog: on GCP the autoscaler reads `subscription/num_undelivered_messages` from Cloud Monitoring; the Pub/Sub
emulator has no such metric and no way to count messages without pulling them (a pull and nack counts as a
delivery attempt against the dead-letter policy and, with exactly-once delivery, holds the message). So locally the
backlog is read from the job documents, the truth the messages only point at: queued jobs wait for a runner,
running jobs name their runner (`lease_owner`), which is how a runner is known to be busy.

`decide()` is pure; `LocalAutoscaler` applies it to a `Supervisor` each tick."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from emulators.supervisor import Supervisor

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AutoscalePolicy:
    min_runners: int = 0
    max_runners: int = 4
    jobs_per_runner: int = 1  # one job at a time per GPU, like `single_instance_assignment` on GCP
    idle_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_runners <= self.max_runners or self.max_runners < 1 or self.jobs_per_runner < 1:
            raise ValueError(f"autoscale needs 0 <= min <= max, max >= 1, got {self.min_runners}:{self.max_runners}")


@dataclass(frozen=True)
class Backlog:
    queued: int
    busy_runners: frozenset[str]  # lease owners of running jobs


@dataclass(frozen=True)
class ScaleDecision:
    start: int = 0
    retire: tuple[str, ...] = ()


def parse_range(text: str) -> AutoscalePolicy:
    """`"0:4"` -> AutoscalePolicy(min_runners=0, max_runners=4)."""
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError as exc:
        raise ValueError(f"AUTOSCALE must look like MIN:MAX (e.g. 0:4), got {text!r}") from exc
    return AutoscalePolicy(min_runners=low, max_runners=high)


def decide(policy: AutoscalePolicy, backlog: Backlog, runners: Sequence[str],
           last_busy: Mapping[str, float], now: float) -> ScaleDecision:
    """How many runners to start, or which idle ones to retire. Pure."""
    demand = backlog.queued + len(backlog.busy_runners)
    wanted = min(policy.max_runners, max(policy.min_runners, math.ceil(demand / policy.jobs_per_runner)))
    if wanted > len(runners):
        return ScaleDecision(start=wanted - len(runners))
    idle = [name for name in runners
            if name not in backlog.busy_runners and now - last_busy.get(name, now) >= policy.idle_timeout_s]
    surplus = len(runners) - max(wanted, policy.min_runners)
    return ScaleDecision(retire=tuple(sorted(idle)[:max(surplus, 0)]))


@dataclass
class LocalAutoscaler:
    policy: AutoscalePolicy
    supervisor: Supervisor
    read_backlog: Callable[[], Backlog]
    start_runner: Callable[[str], None]  # adds a runner of that name to the supervisor
    clock: Callable[[], float] = time.monotonic
    prefix: str = "runner-auto-"
    _last_busy: dict[str, float] = field(default_factory=dict)
    _serial: int = 0
    peak: int = 0  # most runners at once: what the e2e test checks

    def runners(self) -> list[str]:
        return [name for name in self.supervisor.names() if name.startswith(self.prefix)]

    def tick(self) -> ScaleDecision:
        now = self.clock()
        backlog = self.read_backlog()
        runners = self.runners()
        for name in runners:
            if name in backlog.busy_runners or name not in self._last_busy:
                self._last_busy[name] = now  # a fresh runner counts as busy: it gets a full idle timeout
        decision = decide(self.policy, backlog, runners, self._last_busy, now)
        for _ in range(decision.start):
            self._serial += 1
            name = f"{self.prefix}{self._serial}"
            self.start_runner(name)
            self._last_busy[name] = now
        for name in decision.retire:
            self.supervisor.retire(name)
            self._last_busy.pop(name, None)
        if decision.start or decision.retire:
            log.info("autoscale", queued=backlog.queued, busy=len(backlog.busy_runners), started=decision.start,
                     retired=list(decision.retire), runners=len(self.runners()))
        self.peak = max(self.peak, len(self.runners()))
        return decision


def firestore_backlog(db) -> Callable[[], Backlog]:
    """Reads the backlog from the job documents (see the module docstring for why not from Pub/Sub)."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    from schemas import names

    jobs = db.collection(names.JOBS)

    def read() -> Backlog:
        queued = jobs.where(filter=FieldFilter("status", "==", "queued")).count().get()
        running = jobs.where(filter=FieldFilter("status", "==", "running")).select(["lease_owner"]).stream()
        owners = frozenset(owner for snap in running if (owner := (snap.to_dict() or {}).get("lease_owner")))
        return Backlog(queued=int(queued[0][0].value), busy_runners=owners)

    return read


def runner_log(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"
