"""Completion events on soul-events, as CloudEvents in Pub/Sub binary mode: the attributes carry type, source and
id (= job id, so consumers can drop the duplicates that at-least-once delivery brings); the data is a JobEvent.
Also re-publishes job messages for the reconciler. Shared by the runner and the `reconcile` function."""

from __future__ import annotations

from google.cloud import pubsub_v1

from schemas import names
from schemas._base import utcnow
from schemas.jobs import JobDoc, JobEvent, JobLane, JobStatus

EVENT_TYPES = {
    JobStatus.SUCCEEDED: names.EVENT_JOB_SUCCEEDED,
    JobStatus.FAILED: names.EVENT_JOB_FAILED,
    JobStatus.CANCELED: names.EVENT_JOB_CANCELED,
}
PUBLISH_TIMEOUT_S = 30.0


class EventPublisher:
    def __init__(self, client: pubsub_v1.PublisherClient, project_id: str, timeout_s: float = PUBLISH_TIMEOUT_S):
        self._client = client
        self._timeout = timeout_s
        self._events = client.topic_path(project_id, names.TOPIC_EVENTS)
        self._jobs = client.topic_path(project_id, names.TOPIC_JOBS)
        self._jobs_background = client.topic_path(project_id, names.TOPIC_JOBS_BACKGROUND)
        self._dead_letter = client.topic_path(project_id, names.TOPIC_JOBS_DEAD_LETTER)

    def job_finished(self, job: JobDoc) -> None:
        self.publish(
            JobEvent(
                job_id=job.job_id, type=job.type, status=JobStatus(job.status), soul_id=job.soul_id,
                requested_by=job.requested_by, result=job.result, error=job.error, occurred_at=utcnow(),
            )
        )

    def publish(self, event: JobEvent) -> None:
        status = JobStatus(event.status)
        attributes = {
            "ce-specversion": "1.0",
            "ce-type": EVENT_TYPES[status],
            "ce-source": names.EVENT_SOURCE_RUNNER,
            "ce-id": event.job_id,
            "ce-time": event.occurred_at.isoformat(),
            "content-type": "application/json",
        }
        self._client.publish(self._events, event.model_dump_json().encode(), **attributes).result(self._timeout)

    def republish_job(self, data: bytes, job_id: str, job_type: str, lane: str = JobLane.INTERACTIVE) -> None:
        """Publish a job's message again, on its lane's topic."""
        topic = self._jobs_background if lane == JobLane.BACKGROUND else self._jobs
        self._client.publish(topic, data, job_id=job_id, type=job_type, schema_version="1").result(self._timeout)

    def dead_letter(self, data: bytes, attributes: dict[str, str], reason: str) -> None:
        """Park an unusable message on the dead-letter topic with the reason, instead of retrying it."""
        attrs = {**attributes, "soul-dead-letter-reason": reason[:1000]}
        self._client.publish(self._dead_letter, data, **attrs).result(self._timeout)
