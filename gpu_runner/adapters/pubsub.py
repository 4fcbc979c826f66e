"""Pub/Sub adapter of the runner: pulls the lanes' subscriptions one message at a time in priority order, and
settles messages: ack, nack (redelivery under the subscription's retry policy) and extending the ack deadline
while a job is held (to the deployed deadline of soul_common/delivery.py). Every call has an overall deadline."""

from __future__ import annotations

import warnings

import structlog
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from soul_common.deadlines import deadline
from soul_common.delivery import RUNNER_ACK_DEADLINE_S

log = structlog.get_logger(__name__)


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


class Acks:
    """Settling one pulled message on its subscription. An ack or nack that fails is logged, never raised: a lost
    ack means a redelivery, which the job's lease makes harmless; a lost nack lets the deadline expire by itself."""

    def __init__(self, subscriber: pubsub_v1.SubscriberClient, timeout_s: float):
        self._subscriber = subscriber
        self._deadline = deadline(timeout_s)

    def ack(self, path: str, ack_id: str) -> None:
        try:
            self._subscriber.acknowledge(request={"subscription": path, "ack_ids": [ack_id]}, **self._deadline)
        except Exception:  # noqa: BLE001 - see the class docstring
            log.warning("ack_failed", exc_info=True)

    def nack(self, path: str, ack_id: str) -> None:
        try:
            self._set_deadline(path, ack_id, 0)
        except Exception:  # noqa: BLE001 - see the class docstring
            log.warning("nack_failed", exc_info=True)

    def extend(self, path: str, ack_id: str) -> None:
        """Keep a held message ours for another ack deadline (the heartbeat calls this; failures propagate)."""
        self._set_deadline(path, ack_id, RUNNER_ACK_DEADLINE_S)

    def _set_deadline(self, path: str, ack_id: str, seconds: int) -> None:
        self._subscriber.modify_ack_deadline(
            request={"subscription": path, "ack_ids": [ack_id], "ack_deadline_seconds": seconds}, **self._deadline)
