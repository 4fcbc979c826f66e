"""Dead-lettered job messages: which of them may go back onto soul-jobs (only a valid `JobRequested`), with
which attributes (the original ones, minus the `soul-dead-letter-*` notes the runner added), and moving them
there. Pulled messages are held under a long lease while the user looks, and whatever is not replayed is put
back (ack deadline 0), so listing never loses a message."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from soul_cli.bus import Bus, Received
from soul_cli.errors import BusError
from schemas import names
from schemas.jobs import JobRequested

ATTRIBUTE_PREFIX = "soul-dead-letter-"
REASON_ATTRIBUTE = "soul-dead-letter-reason"
# Lease on held messages while the user reads and confirms: Pub/Sub's maximum ack deadline.
HOLD_SECONDS = 600


@dataclass(frozen=True)
class DeadLetter:
    """A held dead-lettered message and the verdict on it: `job` when it is a valid JobRequested, else `problem`."""

    received: Received
    job: JobRequested | None
    problem: str | None

    @property
    def replayable(self) -> bool:
        return self.job is not None

    @property
    def reason(self) -> str | None:
        """Why the runner parked it; absent when Pub/Sub moved it after its delivery attempts ran out."""
        return self.received.attributes.get(REASON_ATTRIBUTE)


def inspect(received: Received) -> DeadLetter:
    try:
        job = JobRequested.model_validate_json(received.data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return DeadLetter(received, None, f"not a JobRequested: {where + ': ' if where else ''}{first['msg']}")
    return DeadLetter(received, job, None)


def replay_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """The attributes to publish again: the original ones, without the runner's dead-letter notes."""
    return {key: value for key, value in attributes.items() if not key.startswith(ATTRIBUTE_PREFIX)}


def hold(bus: Bus, limit: int) -> list[DeadLetter]:
    """Up to `limit` messages now on the dead-letter subscription, leased for HOLD_SECONDS; none is acked."""
    held: dict[str, Received] = {}
    try:
        for batch in bus.batches(names.SUB_JOBS_DEAD_LETTER, follow=False, limit=limit):
            for received in batch:
                held[received.message_id] = received  # a redelivery while pulling: its newest ack id counts
            bus.lease(names.SUB_JOBS_DEAD_LETTER, [r.ack_id for r in batch], HOLD_SECONDS)
    except BusError:
        with contextlib.suppress(BusError):  # the original error is the one to report
            bus.lease(names.SUB_JOBS_DEAD_LETTER, [r.ack_id for r in held.values()], 0)
        raise
    return [inspect(r) for r in held.values()]


def put_back(bus: Bus, letters: list[DeadLetter]) -> None:
    """Ends the lease on `letters`: they are delivered again at once, to the next reader."""
    bus.lease(names.SUB_JOBS_DEAD_LETTER, [letter.received.ack_id for letter in letters], 0)


def replay(bus: Bus, letter: DeadLetter) -> str:
    """Publishes a replayable message onto soul-jobs, then acks it on the dead-letter subscription; returns the
    new message id. Published first: a failure in between leaves a duplicate, never a loss, and the runner's
    claim on the job document makes a duplicate harmless. A job that is already finished (e.g. `failed`) is not
    run again: the runner acks its message."""
    if not letter.replayable:
        raise ValueError(f"message {letter.received.message_id} is not replayable: {letter.problem}")
    message_id = bus.publish(names.TOPIC_JOBS, letter.received.data, replay_attributes(letter.received.attributes))
    bus.ack(names.SUB_JOBS_DEAD_LETTER, [letter.received.ack_id])
    return message_id
