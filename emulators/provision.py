"""Creates what the pipeline expects to exist on the stand-ins: the Pub/Sub topics and subscriptions (with the
runner's dead-letter, retry and exactly-once policy) and the media bucket, named as in `schemas.names`. Uses the
real google-cloud clients, pointed at the emulators explicitly (an insecure gRPC channel, an API endpoint and
anonymous credentials) rather than through os.environ, so provisioning has no side effect on the caller's
process. Every step is idempotent: what already exists is kept."""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from emulators.errors import EmulatorError
from schemas import names
from soul_common.delivery import LANES, DeliveryPolicy, policy

TOPICS = (names.TOPIC_JOBS, names.TOPIC_JOBS_BACKGROUND, names.TOPIC_JOBS_DEAD_LETTER, names.TOPIC_EVENTS,
          names.TOPIC_REQUESTS, names.TOPIC_WEBHOOK_RETRIES)


def publisher_client(target: str) -> pubsub_v1.PublisherClient:
    """A publisher talking plain gRPC to the emulator at `target` (host:port)."""
    return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(target)))


def subscriber_client(target: str) -> pubsub_v1.SubscriberClient:
    """A subscriber talking plain gRPC to the emulator at `target` (host:port)."""
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(target)))


def storage_client(endpoint: str, project_id: str) -> storage.Client:
    """A storage client for fake-gcs-server at `endpoint` (http://host:port)."""
    return storage.Client(
        project=project_id, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )


def _runner_subscription(project_id: str, min_backoff_s: float, max_backoff_s: float,
                         delivery: DeliveryPolicy) -> dict:
    """A lane's delivery policy (soul_common/delivery.py): bounded attempts, then the dead-letter topic, with
    backoff between them. The backoffs are the caller's: zero means no retry policy at all, i.e. immediate
    redelivery (the emulator rounds any retry policy up to steps of about 2 s, which would make every
    dead-letter test wait 8 s or more)."""
    request = {
        "name": f"projects/{project_id}/subscriptions/{delivery.subscription}",
        "topic": f"projects/{project_id}/topics/{delivery.topic}",
        "ack_deadline_seconds": delivery.ack_deadline_s,
        "dead_letter_policy": {
            "dead_letter_topic": f"projects/{project_id}/topics/{names.TOPIC_JOBS_DEAD_LETTER}",
            "max_delivery_attempts": delivery.max_attempts,
        },
        "enable_exactly_once_delivery": True,
    }
    if max_backoff_s > 0:
        request["retry_policy"] = {
            "minimum_backoff": timedelta(seconds=min_backoff_s),
            "maximum_backoff": timedelta(seconds=max_backoff_s),
        }
    return request


def _pull_subscription(project_id: str, delivery: DeliveryPolicy) -> dict:
    return {
        "name": f"projects/{project_id}/subscriptions/{delivery.subscription}",
        "topic": f"projects/{project_id}/topics/{delivery.topic}",
        "ack_deadline_seconds": delivery.ack_deadline_s,
    }


def _ensure_push_subscription(subscriber: pubsub_v1.SubscriberClient, project_id: str, endpoint: str,
                              delivery: DeliveryPolicy) -> None:
    """Create the push subscription, or point an existing one at `endpoint` (the function may have moved
    to another port since the last provisioning)."""
    name = f"projects/{project_id}/subscriptions/{delivery.subscription}"
    push_config = {"push_endpoint": endpoint}
    try:
        subscriber.create_subscription(request={
            "name": name, "topic": f"projects/{project_id}/topics/{delivery.topic}", "push_config": push_config,
            "ack_deadline_seconds": delivery.ack_deadline_s,
        })
    except gexc.AlreadyExists:
        subscriber.modify_push_config(request={"subscription": name, "push_config": push_config})


def provision_pubsub(
    target: str,
    project_id: str,
    *,
    retry_min_backoff_s: float,
    retry_max_backoff_s: float,
    push_endpoint: str | None = None,
    webhooks_endpoint: str | None = None,
) -> None:
    """Topics and subscriptions of the pipeline on the emulator at `target` (host:port). `push_endpoint` is the
    ingest function (soul-requests), `webhooks_endpoint` the webhooks function (soul-events and its own
    soul-webhook-retries)."""
    if not 0 <= retry_min_backoff_s <= retry_max_backoff_s <= 600:
        raise EmulatorError(
            f"retry backoffs must satisfy 0 <= min <= max <= 600 s, got min={retry_min_backoff_s}, "
            f"max={retry_max_backoff_s}"
        )
    publisher = publisher_client(target)
    subscriber = subscriber_client(target)
    try:
        for topic in TOPICS:
            try:
                publisher.create_topic(request={"name": publisher.topic_path(project_id, topic)})
            except gexc.AlreadyExists:
                pass
        subscriptions = (
            *(_runner_subscription(project_id, retry_min_backoff_s, retry_max_backoff_s, policy(lane.subscription))
              for lane in LANES),
            _pull_subscription(project_id, policy(names.SUB_JOBS_DEAD_LETTER)),
            _pull_subscription(project_id, policy(names.SUB_EVENTS)),
        )
        for request in subscriptions:
            try:
                subscriber.create_subscription(request=request)
            except gexc.AlreadyExists:
                pass
        if push_endpoint is not None:
            _ensure_push_subscription(subscriber, project_id, push_endpoint, policy(names.SUB_REQUESTS_PUSH))
        if webhooks_endpoint is not None:
            _ensure_push_subscription(subscriber, project_id, webhooks_endpoint, policy(names.SUB_EVENTS_WEBHOOKS))
            _ensure_push_subscription(subscriber, project_id, webhooks_endpoint, policy(names.SUB_WEBHOOK_RETRIES))
    except gexc.GoogleAPICallError as exc:
        raise EmulatorError(f"provisioning Pub/Sub on {target} failed: {exc}") from exc
    finally:
        subscriber.close()
        publisher.transport.close()


def provision_bucket(endpoint: str, project_id: str, bucket: str) -> None:
    """The media bucket on fake-gcs-server at `endpoint` (http://host:port)."""
    client = storage_client(endpoint, project_id)
    try:
        client.create_bucket(bucket)
    except gexc.Conflict:
        pass  # already there
    except gexc.GoogleAPICallError as exc:
        raise EmulatorError(f"creating bucket {bucket!r} on {endpoint} failed: {exc}") from exc
    finally:
        client.close()
