"""Pub/Sub's delivery facts in one place: which topic and subscription each job lane uses, and the delivery
policy (ack deadline, attempts before the dead-letter topic, retry backoff) of every subscription the pipeline
owns. `emulators/provision.py` creates subscriptions from this table, the runner extends ack deadlines and the
reconciler derives its windows from it, and `tests/unit/test_delivery_facts.py` checks that
`infra/terraform/pubsub.tf` deploys the same numbers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType

from schemas import names
from schemas.jobs import JobLane


@dataclass(frozen=True)
class Lane:
    """One job lane: the topic its jobs are published on and the runners' subscription to it."""

    lane: JobLane
    topic: str
    subscription: str


# Interactive first: the runners take a later lane only while every earlier one is empty.
LANES: tuple[Lane, ...] = (
    Lane(JobLane.INTERACTIVE, names.TOPIC_JOBS, names.SUB_RUNNER),
    Lane(JobLane.BACKGROUND, names.TOPIC_JOBS_BACKGROUND, names.SUB_RUNNER_BACKGROUND),
)
_BY_LANE = MappingProxyType({lane.lane: lane for lane in LANES})


def lane_of(lane: JobLane | str) -> Lane:
    return _BY_LANE[JobLane(lane)]


def topic_of(lane: JobLane | str) -> str:
    """The topic a job of `lane` is published (and re-published) on."""
    return lane_of(lane).topic


@dataclass(frozen=True)
class DeliveryPolicy:
    """How Pub/Sub delivers one subscription's messages, as deployed. `max_attempts` None: no dead-letter policy
    (messages are retried until retention); backoffs None: no retry policy (redelivery at once)."""

    subscription: str
    topic: str
    ack_deadline_s: int
    max_attempts: int | None = None
    min_backoff_s: float | None = None
    max_backoff_s: float | None = None
    push: bool = False

    def backoff_after(self, attempt: int) -> float:
        """The wait before delivery `attempt + 1` after a nack or an expired deadline (Pub/Sub's exponential
        backoff between the policy's minimum and maximum; 0 without a retry policy)."""
        if self.min_backoff_s is None or self.max_backoff_s is None:
            return 0.0
        return min(self.max_backoff_s, self.min_backoff_s * 2 ** (attempt - 1))

    def redelivery_window(self) -> timedelta:
        """The longest a delivered, never-acked message can stay on the subscription before it is dead-lettered:
        every attempt held to its ack deadline, with the backoffs between them."""
        attempts = self.max_attempts or 1
        waits = sum(self.backoff_after(a) for a in range(1, attempts))
        return timedelta(seconds=self.ack_deadline_s * attempts + waits)


# Exponential backoff from 10 s to Pub/Sub's maximum of 600 s between the bounded attempts (infra/terraform).
_RETRY = {"min_backoff_s": 10.0, "max_backoff_s": 600.0}
RUNNER_ACK_DEADLINE_S = 60  # the runner extends it with every heartbeat while a job is held

POLICIES: MappingProxyType[str, DeliveryPolicy] = MappingProxyType({
    p.subscription: p for p in (
        *(DeliveryPolicy(lane.subscription, lane.topic, RUNNER_ACK_DEADLINE_S, names.MAX_DELIVERY_ATTEMPTS,
                         **_RETRY) for lane in LANES),
        DeliveryPolicy(names.SUB_JOBS_DEAD_LETTER, names.TOPIC_JOBS_DEAD_LETTER, 60),
        DeliveryPolicy(names.SUB_EVENTS, names.TOPIC_EVENTS, 30),
        # How long Pub/Sub waits for the ingest function's answer.
        DeliveryPolicy(names.SUB_REQUESTS_PUSH, names.TOPIC_REQUESTS, 60, names.MAX_DELIVERY_ATTEMPTS, **_RETRY,
                       push=True),
        # The webhooks function makes each target's first attempt (all targets of the event in parallel, in
        # rounds of its parallel senders) in one push; a target to retry becomes a message on soul-webhook-retries.
        DeliveryPolicy(names.SUB_EVENTS_WEBHOOKS, names.TOPIC_EVENTS, 300, names.MAX_DELIVERY_ATTEMPTS, **_RETRY,
                       push=True),
        # One retry of one target per push: the wait until it is due (at most the backoff's maximum) and one
        # attempt, so a failing target holds one short push of this subscription, never the events' one.
        DeliveryPolicy(names.SUB_WEBHOOK_RETRIES, names.TOPIC_WEBHOOK_RETRIES, 60, names.MAX_DELIVERY_ATTEMPTS,
                       **_RETRY, push=True),
    )
})


def policy(subscription: str) -> DeliveryPolicy:
    return POLICIES[subscription]
