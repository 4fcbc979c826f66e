"""Time estimates: from the pace runners measured on their devices when there is any, else from configuration.
Pure functions over `RunnerStats` documents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.api import VideoEstimate
from schemas.documents import RunnerStats


@dataclass(frozen=True)
class EstimateDefaults:
    image_seconds: float
    video_seconds_per_frame: float  # the original app's SVD_ESTIMATED_SECONDS_PER_FRAME
    encode_seconds_per_frame: float


def _freshest(stats: Sequence[RunnerStats], field: str) -> RunnerStats | None:
    measured = [s for s in stats if getattr(s, field) is not None and s.samples > 0]
    return max(measured, key=lambda s: s.updated_at, default=None)


def image_seconds(stats: Sequence[RunnerStats], defaults: EstimateDefaults) -> float:
    best = _freshest(stats, "image_seconds")
    return round(best.image_seconds if best else defaults.image_seconds, 2)


def video_estimate(stats: Sequence[RunnerStats], num_frames: int, defaults: EstimateDefaults) -> VideoEstimate:
    best = _freshest(stats, "video_seconds_per_frame")
    if best is not None:
        per_frame, encode, source, device = (
            best.video_seconds_per_frame, best.encode_seconds_per_frame or defaults.encode_seconds_per_frame,
            "measured", best.device,
        )
    else:
        per_frame, encode, source, device = (
            defaults.video_seconds_per_frame, defaults.encode_seconds_per_frame, "configured", None,
        )
    video = per_frame * num_frames
    gif = encode * num_frames
    total = video + gif
    return VideoEstimate(
        estimated_seconds=round(total, 2),
        estimated_minutes=round(total / 60, 1),
        video_generation_seconds=round(video, 2),
        gif_conversion_seconds=round(gif, 2),
        num_frames=num_frames,
        source=source,
        seconds_per_frame=round(per_frame, 4),
        device=device,
    )
