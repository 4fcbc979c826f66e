"""Intake stage of the pipelined runner: pulls the lanes' subscriptions in priority order (interactive first; a
later lane only when every earlier one is empty), and holds claimed jobs in a bounded look-ahead for the render
stage. A waiting claimed job keeps its lease and ack deadline alive (its heartbeat starts at the claim).

`Ticket` is one claimed job travelling through intake -> render -> finish; `LookAhead` is the bounded, lane-ordered
queue between intake and render. Parsing and claiming themselves are the coordinator's (`worker.Runner.admit`)."""

from __future__ import annotations

import threading

from gpu_runner.stages.records import Ticket


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
