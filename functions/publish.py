"""Pub/Sub adapter of the functions: hands jobs to the runner (soul-jobs, or soul-jobs-background for the
background lane: functions/lanes.py) and outcomes to consumers (soul-events)."""

from __future__ import annotations

from google.api_core.retry import Retry
from google.cloud import pubsub_v1

from schemas import names
from schemas.jobs import JobDoc, JobLane, JobRequested

PUBLISH_TIMEOUT_S = 10.0
# Which topic each lane's jobs go to (functions/lanes.py says why there are two).
LANE_TOPICS = {JobLane.INTERACTIVE: names.TOPIC_JOBS, JobLane.BACKGROUND: names.TOPIC_JOBS_BACKGROUND}
# The topics /ready checks: those the functions publish to.
READY_TOPICS = (names.TOPIC_JOBS, names.TOPIC_JOBS_BACKGROUND, names.TOPIC_EVENTS)


class Publisher:
    def __init__(self, client: pubsub_v1.PublisherClient, project_id: str):
        self._client = client
        self._project_id = project_id
        self._jobs_topic = client.topic_path(project_id, names.TOPIC_JOBS)
        self._lane_topics = {lane: client.topic_path(project_id, topic) for lane, topic in LANE_TOPICS.items()}
        self._events_topic = client.topic_path(project_id, names.TOPIC_EVENTS)

    def publish_job(self, job: JobDoc) -> str:
        message = JobRequested(job_id=job.job_id, type=job.type)
        future = self._client.publish(
            self._lane_topics[JobLane(job.lane)],
            message.model_dump_json().encode(),
            job_id=job.job_id,
            type=str(message.type),
            schema_version=str(message.schema_version),
        )
        return future.result(timeout=PUBLISH_TIMEOUT_S)

    def publish_event(self, *, event_type: str, event_id: str, data: bytes) -> str:
        """A CloudEvent in binary mode: attributes carry the envelope, the data is the JSON body."""
        future = self._client.publish(
            self._events_topic,
            data,
            **{
                "ce-specversion": "1.0",
                "ce-type": event_type,
                "ce-source": names.EVENT_SOURCE_FUNCTIONS,
                "ce-id": event_id,
                "content-type": "application/json",
            },
        )
        return future.result(timeout=PUBLISH_TIMEOUT_S)

    def ping(self) -> None:
        """Readiness: every topic the functions publish to exists and can be seen. Publishes nothing.

        Reads topic metadata (pubsub.topics.get): on GCP the functions' account holds roles/pubsub.viewer on
        exactly these topics next to roles/pubsub.publisher (infra/terraform/iam.tf), so this works with least
        privilege; a missing grant shows as `unavailable: PermissionDenied`."""
        for topic in READY_TOPICS:
            path = self._client.topic_path(self._project_id, topic)
            self._client.get_topic(request={"topic": path}, timeout=5, retry=Retry(timeout=5))
