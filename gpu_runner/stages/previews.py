"""Previews while denoising, off the device's path: the render call decodes the latents every `SOUL_PREVIEW_EVERY`
steps (pipelines/previews.py) and hands each job's preview image here; a publisher thread encodes it as a small WebP,
uploads it create-only to `previews/{job_id}/{step}.webp` and gives it to the job's progress reporter, whose
throttled write (about one per second per job) carries the latest preview to the job document. A slow upload never
stalls a step: only the newest preview of a job waits, older ones are dropped. The functions sign the preview's URL
for the `preview` server-sent event (functions/http/sse.py) of tenants whose policy lets them see one."""

from __future__ import annotations

import io
import threading

import structlog
from PIL import Image

from gpu_runner.stages.records import Ticket, WorkContext
from schemas import names
from schemas.jobs import JobPreview

log = structlog.get_logger(__name__)


def encode_preview(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="WEBP", quality=quality, method=0)  # method 0: the fastest encoder
    return out.getvalue()


class PreviewPublisher:
    """One thread for the runner: uploads the latest preview of each job, newest wins."""

    def __init__(self, work: WorkContext):
        self._work = work
        self._pending: dict[str, tuple[Ticket, int, int, Image.Image]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False
        self.published = 0

    def offer(self, ticket: Ticket, step: int, steps: int, image: Image.Image) -> None:
        """From the render thread: keep this preview as the job's next one (replacing an unsent older one)."""
        if ticket.error is not None:
            return
        with self._cond:
            self._pending[ticket.job.job_id] = (ticket, step, steps, image)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="previews", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every offered preview was handled (tests, shutdown)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._busy, timeout=timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                job_id = next(iter(self._pending))
                ticket, step, steps, image = self._pending.pop(job_id)
                self._busy = True
            try:
                self.publish(ticket, step, steps, image)
            except Exception:  # noqa: BLE001 - previews are advisory: the render goes on without this one
                log.warning("preview_failed", job_id=job_id, step=step, exc_info=True)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def publish(self, ticket: Ticket, step: int, steps: int, image: Image.Image) -> JobPreview | None:
        if ticket.error is not None or ticket.image is not None:
            return None  # the job dropped out, or its render is done: this preview is stale
        name = names.preview_object(ticket.job.job_id, step)
        self._work.media.put_once(name, encode_preview(image, self._work.settings.preview_quality), "image/webp")
        preview = JobPreview(object=name, step=step, steps=steps)
        ticket.progress.preview(preview)
        self.published += 1
        return preview
