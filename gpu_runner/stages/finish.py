"""Finish stage of the pipelined runner: everything after the device, overlapping the next render: PNG encode,
create-only upload and variant write (image jobs), then the fenced finish write with the job's metrics, and the
completion event. Acks and failure handling are the coordinator's (`worker.Runner.complete`)."""

from __future__ import annotations

import structlog

from gpu_runner import failpoints
from soul_common.events import EventPublisher
from gpu_runner.stages.image_job import WorkContext, reproducibility, store_image
from gpu_runner.stages.intake import Ticket
from gpu_runner.stages.safety import SafetyStage, verdict_for
from gpu_runner.adapters.jobstore import JobStore
from schemas.identity import AdapterUsed
from schemas.jobs import JobDoc, JobMetrics, JobStatus, JobType

log = structlog.get_logger(__name__)


class FinishStage:
    def __init__(self, work: WorkContext, store: JobStore, events: EventPublisher, model_tag: str, *,
                 video_model_tag: str = "tiny-svd"):
        self._work = work
        self._store = store
        self._events = events
        self._model_tag = model_tag  # the SDXL weights': an image job's metrics name it, an animation's the SVD's
        self._video_model_tag = video_model_tag
        self._safety = SafetyStage(work)

    def succeed(self, ticket: Ticket) -> JobDoc:
        job = ticket.job
        if job.type == JobType.IMAGE:
            if ticket.image is not None:
                self._record_pace(ticket)
            ticket.progress.stage("uploading", 0.92)
            made = reproducibility(job, ticket.plan, self._model_tag, self._work.models, ticket.scheduler)
            result = store_image(job, ticket.plan, ticket.image, self._work, ticket.render_seconds, ticket.safety,
                                 rescore=lambda image: self._rescore(ticket, image), made=made)
        else:
            result = ticket.outcome
        return self._finish(ticket, JobStatus.SUCCEEDED, result)

    def _rescore(self, ticket: Ticket, image):
        """An earlier attempt's object without a verdict: score it now (rare: uploads before the checker)."""
        scores, name, elapsed = self._safety.score([image])
        ticket.safety_seconds += elapsed
        return verdict_for(scores[0], self._work.settings.safety_threshold, name, ticket.job.request)

    def _record_pace(self, ticket: Ticket) -> None:
        """Measured pace for the estimates; here, not in the render stage, so its round trips overlap renders."""
        seconds = ticket.gpu_seconds
        try:
            self._store.record_pace(self._work.models.device.name, image_seconds=seconds,
                                    image_seconds_per_step=seconds / ticket.plan.render.steps)
        except Exception:  # noqa: BLE001 - pace figures are advisory
            log.warning("record_pace_failed", exc_info=True)

    def cancel(self, ticket: Ticket) -> JobDoc:
        return self._finish(ticket, JobStatus.CANCELED, None)

    def _finish(self, ticket: Ticket, status: JobStatus, result) -> JobDoc:
        stop_keepalive(ticket)  # no progress tick or renewal may follow the finish (they are fenced anyway)
        verdict = getattr(result, "safety", None)
        lora = ticket.plan.render.lora if ticket.plan is not None else None
        model = self._video_model_tag if ticket.job.type == JobType.VIDEO else self._model_tag
        metrics = JobMetrics(gpu_seconds=round(ticket.gpu_seconds + ticket.safety_seconds, 4), model=model,
                             device=self._work.models.device.name, batch_size=ticket.batch_size,
                             safety_seconds=round(ticket.safety_seconds, 4),
                             safety_model=verdict.model if verdict is not None else None,
                             adapter_load_seconds=round(ticket.adapter_load_seconds, 4),
                             adapters=(AdapterUsed(name=lora.name, version=lora.version, scale=lora.scale),)
                             if lora else ())
        finished = self._store.finish(ticket.job.job_id, status, result=result, metrics=metrics)
        log.info("job_finished", job_id=finished.job_id, status=finished.status, attempts=finished.attempts,
                 gpu_seconds=metrics.gpu_seconds, batch_size=metrics.batch_size)
        self._work.failpoints.hit(failpoints.AFTER_FINISH, job_id=finished.job_id)
        self.publish_outcome(finished)
        return finished

    def publish_outcome(self, job: JobDoc) -> None:
        self._events.job_finished(job)
        self._store.mark_event_published(job.job_id)


def stop_keepalive(ticket: Ticket) -> None:
    ticket.progress.close()
    ticket.heartbeat.stop()
