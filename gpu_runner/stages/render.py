"""Render stage of the pipelined runner: the only user of the device. Takes claimed jobs from the look-ahead
(interactive first), groups image jobs that can share one pipeline call (same size, steps, guidance: `batch_key`)
into a batch of at most `max_batch`, renders, and hands each job on to the finish stage.

Per job, not per batch: a job whose cancel, lost lease or shutdown is signalled mid-batch drops out alone (its
partners go on), and each job gets its share of the batch's device time (GPU-seconds)."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from gpu_runner import failpoints
from gpu_runner.errors import JobCanceled, LeaseLost, TransientError
from gpu_runner.stages.image_job import WorkContext
from gpu_runner.stages.intake import LookAhead, Ticket
from gpu_runner.stages.previews import PreviewPublisher
from gpu_runner.stages.safety import SafetyStage
from schemas.jobs import JobDoc, JobType

log = structlog.get_logger(__name__)

GIB = 1024**3
# Device memory one more SDXL batch item needs at 1024x1024 in fp16 (latents, activations, VAE decode), rounded up.
# Measured on an H200 (BENCHMARKS.md, bench/gpu.py --batches 1,2,4): SDXL 1024x1024 with CFG peaks at 11.6 GiB
# for batch 1 (6.9 of them weights), 16.3 for 2 and 25.8 for 4: about 4.8 GiB per item, rounded up.
BYTES_PER_BATCH_ITEM = 5 * GIB
MAX_AUTO_BATCH = 4


def default_max_batch(free_device_bytes: int | None) -> int:
    """SOUL_MAX_BATCH when unset: 1 on CPU (no gain), else what the free device memory holds, at most 4."""
    if free_device_bytes is None:
        return 1
    return max(1, min(MAX_AUTO_BATCH, free_device_bytes // BYTES_PER_BATCH_ITEM))


def batchable(ticket: Ticket) -> bool:
    return ticket.job.type == JobType.IMAGE and ticket.plan is not None and ticket.plan.needs_render


def gather(first: Ticket, lookahead: LookAhead, max_batch: int, wait_s: float) -> list[Ticket]:
    """`first` and the waiting jobs that can share its pipeline call; waits at most `wait_s` for partners, so a
    batch never delays its first job by more than that."""
    if max_batch <= 1 or not batchable(first):
        return [first]
    key = first.plan.batch_key

    def matches(ticket: Ticket) -> bool:
        return batchable(ticket) and ticket.plan.batch_key == key

    batch = [first, *lookahead.take_matching(matches, max_batch - 1)]
    deadline = time.monotonic() + wait_s
    while len(batch) < max_batch and (left := deadline - time.monotonic()) > 0:
        lookahead.wait_for_more(left)
        batch += lookahead.take_matching(matches, max_batch - len(batch))
    return batch


class RenderStage:
    def __init__(self, work: WorkContext, model_tag: str, announce_start: Callable[[JobDoc], None] | None = None):
        self._work = work
        self.model_tag = model_tag
        self._announce_start = announce_start  # soul.job.started, for jobs whose webhooks asked for `start`
        self.safety = SafetyStage(work)  # after the render, before the finish stage uploads anything
        self.previews = PreviewPublisher(work)

    def prepare(self, first: Ticket) -> None:
        """Load the pipeline `first` needs before its batch is gathered (partners keep arriving meanwhile), and the
        safety checker that scores its images."""
        if batchable(first):
            try:
                self._work.models.checker()
                self._work.models.sdxl()
            except Exception as exc:  # noqa: BLE001 - settled by the coordinator, like a failed render
                first.error = exc

    def render(self, batch: list[Ticket]) -> None:
        """Render `batch`; each ticket ends with its image/outcome, or its own `error`."""
        live = [t for t in batch if t.error is None and self._start(t)]
        if not live:
            return
        if live[0].job.type == JobType.VIDEO:
            assert len(live) == 1, "video jobs render alone"
            self._render_video(live[0])
            return
        todo = [t for t in live if t.plan.needs_render]
        if todo:
            self._render_images(todo)
            self.safety.check(todo)

    def _start(self, ticket: Ticket) -> bool:
        """THE place where a job starts on the device (job_started events hook in here)."""
        try:
            if ticket.job.cancel_requested:
                raise JobCanceled("cancel requested before start")
            ticket.progress.stage("loading_model", 0.02)
        except Exception as exc:  # noqa: BLE001 - this job drops out; the coordinator settles it
            ticket.error = exc
            return False
        log.info("job_started", job_id=ticket.job.job_id, lane=ticket.lane)
        if self._announce_start is not None and "start" in ticket.job.notify:
            try:
                self._announce_start(ticket.job)
            except Exception:  # noqa: BLE001 - advisory: a lost start event never stops the render
                log.warning("start_event_failed", job_id=ticket.job.job_id, exc_info=True)
        return True

    def _render_video(self, ticket: Ticket) -> None:
        from gpu_runner.stages.video_job import run_video_job

        started = time.perf_counter()
        try:
            ticket.outcome = run_video_job(ticket.job, self._work, ticket.progress)
        except Exception as exc:  # noqa: BLE001 - settled by the coordinator
            ticket.error = exc
        ticket.gpu_seconds = ticket.render_seconds = time.perf_counter() - started

    def _render_images(self, batch: list[Ticket]) -> None:
        from gpu_runner.pipelines.sdxl import render_images

        def on_step(done: int, total: int) -> None:
            self._work.failpoints.hit(failpoints.MID_RENDER, step=done)
            for ticket in batch:
                if ticket.error is None:
                    try:
                        ticket.progress.step(done, total, stage="denoising", span=(0.05, 0.9))
                    except (JobCanceled, LeaseLost, TransientError) as exc:
                        ticket.error = exc  # this one drops out; its partners go on
                        log.info("job_dropped_from_batch", job_id=ticket.job.job_id, reason=type(exc).__name__)
            if all(ticket.error is not None for ticket in batch):
                raise batch[0].error  # nobody left: stop the render

        conditioning = []

        def prepare(pipe) -> dict:
            # One adapter set per batch (batch_key includes it): the first job's is everyone's.
            conditioning.append(self._work.models.adapters.prepare(pipe, batch[0].plan.render,
                                                                   self._work.media.read))
            return conditioning[0].kwargs

        try:
            pipe = self._work.models.sdxl()
            previews = self._previews_for(batch)
            started = time.perf_counter()
            images = render_images(pipe, [t.plan.render for t in batch], on_step, previews, prepare=prepare)
            elapsed = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - the whole call failed: every job still in it gets the error
            for ticket in batch:
                ticket.error = ticket.error or exc
            return
        share = elapsed / len(batch)
        for ticket, image in zip(batch, images):
            ticket.image, ticket.batch_size = image, len(batch)
            ticket.gpu_seconds = ticket.render_seconds = share
            ticket.adapter_load_seconds, ticket.scheduler = conditioning[0].load_seconds, conditioning[0].scheduler
        log.info("batch_rendered", jobs=[t.job.job_id for t in batch], seconds=round(elapsed, 3))

    def _previews_for(self, batch: list[Ticket]):
        """The render call's preview hook (SOUL_PREVIEW_EVERY steps; None when off): each item's preview goes to
        the publisher thread, so the device only pays for the latent decode."""
        every = self._work.settings.preview_every
        if every <= 0:
            return None
        from gpu_runner.pipelines.previews import Previews  # deferred: loads torch

        def emit(index: int, step: int, steps: int, image) -> None:
            self.previews.offer(batch[index], step, steps, image)

        return Previews(every=every, decode=self._work.models.preview_decoder(), emit=emit)
