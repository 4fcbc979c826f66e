"""Intake stage of the pipelined runner: pulls the lanes' subscriptions in priority order (interactive first; a
later lane only when every earlier one is empty), and holds claimed jobs in a bounded look-ahead for the render
stage. A waiting claimed job keeps its lease and ack deadline alive (its heartbeat starts at the claim).

`Ticket` is one claimed job travelling through intake -> render -> finish; `LookAhead` is the bounded, lane-ordered
queue between intake and render. Parsing and claiming themselves are the coordinator's (`worker.Runner.admit`)."""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any

import structlog
from google.api_core import exceptions as gexc

from gpu_runner.heartbeat import Heartbeat
from gpu_runner.progress import JobSignals, ProgressReporter
from schemas.jobs import JobDoc, JobRequested

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class Ticket:
    received: Any  # the Pub/Sub ReceivedMessage
    subscription: str  # its subscription path: acks go back there
    lane: int  # 0 = interactive (the first subscription), higher = later lanes
    request: JobRequested
    job: JobDoc
    signals: JobSignals
    progress: ProgressReporter
    heartbeat: Heartbeat
    plan: Any = None  # image_job.ImagePlan for image jobs
    image: Any = None  # the rendered image (render stage -> finish stage)
    outcome: Any = None  # a finished video's result
    render_seconds: float = 0.0
    gpu_seconds: float = 0.0  # this job's share of its batch's device time
    batch_size: int = 1
    error: BaseException | None = None  # set when this job dropped out (its partners go on)
    sequence: int = 0  # arrival order in the look-ahead


class LookAhead:
    """Claimed jobs waiting for the device: at most `capacity`, taken interactive first, then by arrival."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._items: list[Ticket] = []
        self._cond = threading.Condition()
        self._sequence = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def wait_for_room(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._items) < self._capacity, timeout)

    def put(self, ticket: Ticket) -> None:
        with self._cond:
            self._sequence += 1
            ticket.sequence = self._sequence
            self._items.append(ticket)
            self._cond.notify_all()

    def take(self, timeout: float) -> Ticket | None:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            ticket = min(self._items, key=lambda t: (t.lane, t.sequence))
            self._items.remove(ticket)
            self._cond.notify_all()
            return ticket

    def take_matching(self, matches, limit: int) -> list[Ticket]:
        """Up to `limit` waiting tickets for which `matches(ticket)` holds, in take order."""
        with self._cond:
            chosen = [t for t in sorted(self._items, key=lambda t: (t.lane, t.sequence)) if matches(t)][:limit]
            for ticket in chosen:
                self._items.remove(ticket)
            if chosen:
                self._cond.notify_all()
            return chosen

    def wait_for_more(self, timeout: float) -> None:
        with self._cond:
            count = len(self._items)
            self._cond.wait_for(lambda: len(self._items) > count, timeout)

    def drain(self) -> list[Ticket]:
        with self._cond:
            items, self._items = self._items, []
            self._cond.notify_all()
            return items


class LanePuller:
    """Pulls one message at a time from the first non-empty subscription, in lane order. A missing subscription
    (NotFound, e.g. no background lane deployed) is logged once and skipped from then on."""

    def __init__(self, subscriber, paths: list[str], timeout_s: float):
        self._subscriber = subscriber
        self._paths = list(paths)
        self._missing: set[str] = set()
        self._timeout = timeout_s

    def pull(self):
        """(received message, subscription path, lane) or None when every lane is empty now."""
        for lane, path in enumerate(self._paths):
            if path in self._missing:
                continue
            received = self._pull_one(path)
            if received is not None:
                return received, path, lane
        return None

    def _pull_one(self, path: str):
        try:
            with warnings.catch_warnings():
                # return_immediately (deprecated, still honoured) lets an empty interactive lane be skipped at once.
                warnings.simplefilter("ignore", DeprecationWarning)
                response = self._subscriber.pull(
                    request={"subscription": path, "max_messages": 1, "return_immediately": True},
                    timeout=self._timeout,
                )
        except gexc.NotFound:
            self._missing.add(path)
            log.warning("subscription_missing", subscription=path)
            return None
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable, gexc.RetryError):
            return None
        return response.received_messages[0] if response.received_messages else None
