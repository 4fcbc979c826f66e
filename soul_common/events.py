"""Completion events on soul-events, as CloudEvents in Pub/Sub binary mode: the attributes carry type, source and
id (= job id, so consumers can drop the duplicates that at-least-once delivery brings); the data is a JobEvent.
Also re-publishes job messages for the reconciler. Shared by the runner and the `reconcile` function."""

from __future__ import annotations

import threading
import time

import structlog
from google.cloud import pubsub_v1

from schemas import names
from schemas._base import utcnow
from schemas.jobs import JobDoc, JobEvent, JobLane, JobRequested, JobStatus, JobType
from schemas.push import JobProgress, JobStarted
from soul_common.delivery import topic_of

log = structlog.get_logger(__name__)

EVENT_TYPES = {
    JobStatus.SUCCEEDED: names.EVENT_JOB_SUCCEEDED,
    JobStatus.FAILED: names.EVENT_JOB_FAILED,
    JobStatus.CANCELED: names.EVENT_JOB_CANCELED,
}
PUBLISH_TIMEOUT_S = 30.0
PROGRESS_INTERVAL_S = 2.0


def cloud_event_attributes(event_type: str, source: str, event_id: str, time_iso: str | None = None) -> dict[str, str]:
    """The CloudEvent envelope of a soul-events message in Pub/Sub binary mode (the data is the JSON body).
    `ce-id` is what consumers deduplicate on; `ce-time` the event's own time (now when not given)."""
    return {
        "ce-specversion": "1.0",
        "ce-type": event_type,
        "ce-source": source,
        "ce-id": event_id,
        "ce-time": time_iso or utcnow().isoformat(),
        "content-type": "application/json",
    }


def job_message(job_id: str, job_type: JobType | str) -> tuple[bytes, dict[str, str]]:
    """A soul-jobs message: the body names the job (the job document holds the request); the attributes are
    for logs and filters only, never trusted."""
    message = JobRequested(job_id=job_id, type=job_type)
    attributes = {"job_id": job_id, "type": str(message.type), "schema_version": str(message.schema_version)}
    return message.model_dump_json().encode(), attributes


class EventPublisher:
    def __init__(self, client: pubsub_v1.PublisherClient, project_id: str, timeout_s: float = PUBLISH_TIMEOUT_S,
                 progress_interval_s: float = PROGRESS_INTERVAL_S):
        self._client = client
        self._timeout = timeout_s
        self._progress_interval_s = progress_interval_s
        self._progress_lock = threading.Lock()
        self._progress_sent: dict[str, tuple[float, int]] = {}  # job id -> (monotonic time, seq) of the last one
        self._client_project = project_id
        self._events = client.topic_path(project_id, names.TOPIC_EVENTS)
        self._dead_letter = client.topic_path(project_id, names.TOPIC_JOBS_DEAD_LETTER)

    def job_finished(self, job: JobDoc) -> None:
        self.publish(
            JobEvent(
                job_id=job.job_id, type=job.type, status=JobStatus(job.status), soul_id=job.soul_id,
                requested_by=job.requested_by, result=job.result, error=job.error, occurred_at=utcnow(),
            )
        )

    def job_started(self, job: JobDoc) -> None:
        """`soul.job.started` (id `{job_id}:started`), for webhooks that asked for `start`."""
        event = JobStarted(job_id=job.job_id, type=job.type, lane=job.lane, occurred_at=utcnow())
        self._publish_cloud_event(names.EVENT_JOB_STARTED, f"{job.job_id}:started", event.model_dump_json().encode(),
                                  event.occurred_at.isoformat(), wait=False)

    def job_progress(self, job: JobDoc, progress: float, stage: str, eta: float | None, preview=None) -> bool:
        """Publish progress unless one went out for this job less than `progress_interval_s` ago (the last
        step, progress 1.0, always goes, and so does a tick carrying a preview: those are already bounded by the
        runner's progress writes). True when published."""
        now = time.monotonic()
        with self._progress_lock:
            last_at, last_seq = self._progress_sent.get(job.job_id, (float("-inf"), -1))
            if progress < 1.0 and now - last_at < self._progress_interval_s and preview is None:
                return False
            seq = last_seq + 1
            self._progress_sent[job.job_id] = (now, seq)
            if progress >= 1.0:
                self._progress_sent.pop(job.job_id, None)
        event = JobProgress(job_id=job.job_id, type=job.type, seq=seq, progress=min(max(progress, 0.0), 1.0),
                            stage=stage, eta_seconds=eta, occurred_at=utcnow(), preview=preview)
        self._publish_cloud_event(names.EVENT_JOB_PROGRESS, f"{job.job_id}:progress:{seq}",
                                  event.model_dump_json().encode(), event.occurred_at.isoformat(), wait=False)
        return True

    def publish(self, event: JobEvent) -> None:
        self._publish_cloud_event(EVENT_TYPES[JobStatus(event.status)], event.job_id,
                                  event.model_dump_json().encode(), event.occurred_at.isoformat())

    def _publish_cloud_event(self, event_type: str, event_id: str, data: bytes, time_iso: str, *,
                             wait: bool = True) -> None:
        """Publish one CloudEvent; `wait=False` for advisory events (start, progress): the caller (the render
        thread, the progress writer) does not wait on Pub/Sub, and a lost one is only logged."""
        attributes = cloud_event_attributes(event_type, names.EVENT_SOURCE_RUNNER, event_id, time_iso)
        future = self._client.publish(self._events, data, **attributes)
        if wait:
            future.result(self._timeout)
        else:
            future.add_done_callback(_log_failure(event_type, event_id))

    def republish_job(self, job_id: str, job_type: JobType | str, lane: JobLane | str = JobLane.INTERACTIVE) -> None:
        """Publish a job's message again, on its lane's topic."""
        data, attributes = job_message(job_id, job_type)
        topic = self._client.topic_path(self._client_project, topic_of(lane))
        self._client.publish(topic, data, **attributes).result(self._timeout)

    def dead_letter(self, data: bytes, attributes: dict[str, str], reason: str) -> None:
        """Park an unusable message on the dead-letter topic with the reason, instead of retrying it."""
        attrs = {**attributes, "soul-dead-letter-reason": reason[:1000]}
        self._client.publish(self._dead_letter, data, **attrs).result(self._timeout)


def _log_failure(event_type: str, event_id: str):
    def done(future) -> None:
        if future.exception() is not None:
            log.warning("event_publish_failed", event_type=event_type, event_id=event_id,
                        error=repr(future.exception()))

    return done
