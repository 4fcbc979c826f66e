"""The typed records the runner's stages hand each other: `WorkContext` (what every stage works with: settings,
job store, media store, models, failpoints), `ImagePlan` (an image job fixed before it reaches the device) and
`Ticket` (one claimed job on its way through intake -> render -> finish)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpu_runner import failpoints
from gpu_runner.adapters.jobstore import JobStore
from gpu_runner.adapters.storage import MediaStore, StoredObject
from gpu_runner.failpoints import Failpoints
from gpu_runner.pipelines.host import ModelHost
from gpu_runner.pipelines.specs import RenderSpec, batch_key
from gpu_runner.settings import RunnerSettings
from gpu_runner.stages.heartbeat import Heartbeat
from gpu_runner.stages.progress import JobSignals, ProgressReporter
from schemas.jobs import JobDoc, JobRequested, VideoResult
from schemas.safety import SafetyVerdict

if TYPE_CHECKING:
    from google.pubsub_v1.types import ReceivedMessage
    from PIL import Image


@dataclass(frozen=True)
class WorkContext:
    settings: RunnerSettings
    store: JobStore
    media: MediaStore
    models: ModelHost
    failpoints: Failpoints = failpoints.NONE


@dataclass(frozen=True)
class ImagePlan:
    """What an image job will do, fixed before it reaches the device: its object, its render spec (checked on
    construction, so a bad spec fails here, alone), and the object of an earlier attempt when there is one."""

    object_name: str
    render: RenderSpec
    stored: StoredObject | None  # the earlier attempt's upload: nothing left to render

    @property
    def needs_render(self) -> bool:
        return self.stored is None

    @property
    def batch_key(self) -> tuple:
        return batch_key(self.render)


@dataclass(eq=False)
class Ticket:
    """One claimed job travelling through intake -> render -> finish. Mutable on purpose and owned by one stage at
    a time: the render stage fills `image`/`outcome` and the device figures, any stage may set `error`."""

    received: ReceivedMessage
    subscription: str  # its subscription path: acks go back there
    lane: int  # 0 = interactive (the first subscription), higher = later lanes
    request: JobRequested
    job: JobDoc
    signals: JobSignals
    progress: ProgressReporter
    heartbeat: Heartbeat
    plan: ImagePlan | None = None  # image jobs only
    image: Image.Image | None = None  # the rendered image (render stage -> finish stage)
    outcome: VideoResult | None = None  # a finished video's result
    render_seconds: float = 0.0
    gpu_seconds: float = 0.0  # this job's share of its batch's device time
    batch_size: int = 1
    adapter_load_seconds: float = 0.0  # loading its batch's LoRA/IP-Adapter (0 when resident)
    scheduler: str | None = None  # the scheduler its render used (gpu_runner/pipelines/adapters.py)
    safety: SafetyVerdict | None = None  # the checker's verdict on `image` (safety stage -> finish stage)
    safety_seconds: float = 0.0  # this job's share of the checker's call
    error: BaseException | None = None  # set when this job dropped out (its partners go on)
    sequence: int = 0  # arrival order in the look-ahead
