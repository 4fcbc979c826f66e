"""Pub/Sub adapter of the functions: hands jobs to the runner (on their lane's topic: soul_common/delivery.py)
and outcomes to consumers (soul-events, as CloudEvents with the envelope of soul_common/events.py)."""

from __future__ import annotations

from google.api_core.retry import Retry
from google.cloud import pubsub_v1

from schemas import names
from schemas.jobs import JobDoc
from soul_common.delivery import LANES, topic_of
from soul_common.events import cloud_event_attributes, job_message

PUBLISH_TIMEOUT_S = 10.0
# The topics /ready checks: those the functions publish to.
READY_TOPICS = (*(lane.topic for lane in LANES), names.TOPIC_EVENTS)


class Publisher:
    def __init__(self, client: pubsub_v1.PublisherClient, project_id: str):
        self._client = client
        self._project_id = project_id
        self._events_topic = client.topic_path(project_id, names.TOPIC_EVENTS)

    def publish_job(self, job: JobDoc) -> str:
        data, attributes = job_message(job.job_id, job.type)
        future = self._client.publish(self._client.topic_path(self._project_id, topic_of(job.lane)), data,
                                      **attributes)
        return future.result(timeout=PUBLISH_TIMEOUT_S)

    def publish_event(self, *, event_type: str, event_id: str, data: bytes, time_iso: str | None = None) -> str:
        """A CloudEvent in binary mode: attributes carry the envelope, the data is the JSON body."""
        attributes = cloud_event_attributes(event_type, names.EVENT_SOURCE_FUNCTIONS, event_id, time_iso)
        future = self._client.publish(self._events_topic, data, **attributes)
        return future.result(timeout=PUBLISH_TIMEOUT_S)

    def publish_webhook_retry(self, data: bytes, attributes: dict[str, str]) -> str:
        """A webhook target's next attempt on soul-webhook-retries (functions/services/webhook_delivery.py)."""
        future = self._client.publish(self._client.topic_path(self._project_id, names.TOPIC_WEBHOOK_RETRIES), data,
                                      **attributes)
        return future.result(timeout=PUBLISH_TIMEOUT_S)

    def ping(self) -> None:
        """Readiness: every topic the functions publish to exists and can be seen. Publishes nothing.

        Reads topic metadata (pubsub.topics.get): on GCP the functions' account holds roles/pubsub.viewer on
        exactly these topics next to roles/pubsub.publisher (infra/terraform/iam.tf), so this works with least
        privilege; a missing grant shows as `unavailable: PermissionDenied`."""
        for topic in READY_TOPICS:
            path = self._client.topic_path(self._project_id, topic)
            self._client.get_topic(request={"topic": path}, timeout=5, retry=Retry(timeout=5))
