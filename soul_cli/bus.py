"""Pub/Sub adapter of the CLI: synchronous pulls, acks, lease changes and publishes on the topics and
subscriptions named in `schemas.names`. Received messages become immutable `Received` records, and every
google-api-core failure becomes a `BusError` with a message that says what to check. The clients honour
PUBSUB_EMULATOR_HOST, so the same code talks to the emulator and to GCP."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions
from google.cloud import pubsub_v1

from soul_cli.errors import BusError

MAX_PULL = 100  # messages asked for in one pull
EMPTY_ROUNDS = 2  # immediate pulls that must come back empty in a row before "nothing is there"
IMMEDIATE_PULL_TIMEOUT_S = 10.0
# A blocking pull that finds nothing ends with DeadlineExceeded after this long; the follower just asks again.
BLOCKING_PULL_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Received:
    """One pulled message, leased to this process until acked, released, or its ack deadline passes."""

    subscription: str
    ack_id: str
    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time: datetime
    delivery_attempt: int


class Bus:
    """The CLI's view of Pub/Sub in one project. `publisher` is only needed to publish."""

    def __init__(
        self,
        project_id: str,
        subscriber: pubsub_v1.SubscriberClient,
        publisher: pubsub_v1.PublisherClient | None = None,
    ):
        self.project_id = project_id
        self._subscriber = subscriber
        self._publisher = publisher

    def pull(self, subscription: str, max_messages: int, *, wait: bool) -> list[Received]:
        """Up to `max_messages`. `wait=False` answers at once, even empty (`return_immediately`: deprecated, but
        a blocking pull on an empty emulator subscription sits ~9 s); `wait=True` blocks until messages come or
        BLOCKING_PULL_TIMEOUT_S passes."""
        path = self._subscriber.subscription_path(self.project_id, subscription)
        request = {"subscription": path, "max_messages": max_messages, "return_immediately": not wait}
        timeout = BLOCKING_PULL_TIMEOUT_S if wait else IMMEDIATE_PULL_TIMEOUT_S
        with warnings.catch_warnings(), self._errors("pull from", path):
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                response = self._subscriber.pull(request=request, timeout=timeout, retry=None)
            except gexc.DeadlineExceeded:
                if wait:
                    return []
                raise
        return [
            Received(
                subscription=subscription,
                ack_id=r.ack_id,
                message_id=r.message.message_id,
                data=bytes(r.message.data),
                attributes=dict(r.message.attributes),
                publish_time=r.message.publish_time,
                delivery_attempt=r.delivery_attempt,
            )
            for r in response.received_messages
        ]

    def batches(self, subscription: str, *, follow: bool, limit: int | None = None) -> Iterator[list[Received]]:
        """Pulls batch after batch, `limit` messages at most. Without `follow` it stops once the subscription
        has answered empty EMPTY_ROUNDS times in a row; with it, it waits for more until `limit`."""
        remaining, empty = limit, 0
        while remaining is None or remaining > 0:
            batch = self.pull(subscription, MAX_PULL if remaining is None else min(MAX_PULL, remaining), wait=follow)
            if not batch:
                empty += 1
                if not follow and empty >= EMPTY_ROUNDS:
                    return
                continue
            empty = 0
            if remaining is not None:
                remaining -= len(batch)
            yield batch

    def ack(self, subscription: str, ack_ids: list[str]) -> None:
        if not ack_ids:
            return
        path = self._subscriber.subscription_path(self.project_id, subscription)
        with self._errors("acknowledge on", path):
            self._subscriber.acknowledge(request={"subscription": path, "ack_ids": ack_ids}, retry=None)

    def lease(self, subscription: str, ack_ids: list[str], seconds: int) -> None:
        """Set the ack deadline of leased messages; 0 puts them back for immediate redelivery."""
        if not ack_ids:
            return
        path = self._subscriber.subscription_path(self.project_id, subscription)
        with self._errors("modify ack deadlines on", path):
            self._subscriber.modify_ack_deadline(
                request={"subscription": path, "ack_ids": ack_ids, "ack_deadline_seconds": seconds}, retry=None
            )

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publishes and waits for the server's message id."""
        if self._publisher is None:
            raise RuntimeError("this Bus was opened without a publisher")  # a wiring bug, not a user error
        path = self._publisher.topic_path(self.project_id, topic)
        with self._errors("publish to", path):
            try:
                return self._publisher.publish(path, data, **attributes).result(timeout=PUBLISH_TIMEOUT_S)
            except TimeoutError:
                raise BusError(f"publishing to {path} got no answer in {PUBLISH_TIMEOUT_S:.0f} s") from None

    @contextmanager
    def _errors(self, what: str, path: str) -> Iterator[None]:
        """google-api-core errors as one-line BusErrors saying what to check."""
        try:
            yield
        except gexc.NotFound:
            raise BusError(
                f"cannot {what} {path}: it does not exist. Is Pub/Sub provisioned (`python -m emulators up`) and "
                f"is the project ({self.project_id}) right? Set it with --project or GCS_PROJECT_ID."
            ) from None
        except gexc.ServiceUnavailable as exc:
            raise BusError(
                f"cannot {what} {path}: Pub/Sub is out of reach ({exc.message}). Locally, is the emulator up and "
                "PUBSUB_EMULATOR_HOST set?"
            ) from None
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise BusError(f"cannot {what} {path}: {getattr(exc, 'message', exc)}") from None


@contextmanager
def connect(project_id: str, *, publish: bool = False) -> Iterator[Bus]:
    """The clients for one command, closed afterwards. They read PUBSUB_EMULATOR_HOST and, on GCP, the
    application-default credentials."""
    with _credentials_hint():
        subscriber = pubsub_v1.SubscriberClient()
    try:
        with _credentials_hint():
            publisher = pubsub_v1.PublisherClient() if publish else None
        try:
            yield Bus(project_id, subscriber, publisher)
        finally:
            if publisher is not None:
                publisher.stop()
                publisher.transport.close()
    finally:
        subscriber.close()


@contextmanager
def _credentials_hint() -> Iterator[None]:
    try:
        yield
    except auth_exceptions.DefaultCredentialsError:
        raise BusError(
            "no Google credentials: run `gcloud auth application-default login`, or set PUBSUB_EMULATOR_HOST to "
            "use the emulator"
        ) from None
