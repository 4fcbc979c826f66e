"""Stable Video Diffusion in the runner: loading (the tiny offline stand-in of `tiny.py`, or real SVD-XT weights)
and rendering frames of an `AnimationSpec` (pipelines/specs.py).

Memory policy (`residency_policy`, applied by `pipelines.host.ModelHost`): SDXL (~7 GB in fp16) is the hot path and
stays resident. SVD-XT (~4.5 GB in fp16, plus up to ~10 GB of activations at 25 frames) is loaded into host
memory first and joins it on the GPU when the free memory holds its weights plus that headroom, so an animation
right after an image pays no transfer. Otherwise SVD runs with `enable_model_cpu_offload`: each component moves
to the GPU only while it works, which costs host-to-device copies per job instead of an out-of-memory error."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from diffusers import StableVideoDiffusionPipeline
from PIL import Image

from gpu_runner.pipelines.specs import AnimationSpec
from gpu_runner.pipelines.tiny import ensure_tiny_svd

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Free memory kept beyond both pipelines' weights: activations of a 25-frame SVD decode at 1024x576.
RESIDENCY_HEADROOM_BYTES = 10 * 2**30


def load_svd(model: str | None, cache_dir: Path, device: str, dtype: torch.dtype) -> StableVideoDiffusionPipeline:
    """None: the tiny offline model. A local folder in the img2vid-xt layout: loaded offline. A hub id (e.g. the
    original app's `stabilityai/stable-video-diffusion-img2vid-xt`): only where the VM may download."""
    if model is None:
        pipe = StableVideoDiffusionPipeline.from_pretrained(ensure_tiny_svd(cache_dir), local_files_only=True)
        return pipe.to(device, dtype)
    folder = Path(model)
    if folder.is_dir():
        variant = "fp16" if dtype == torch.float16 and any(folder.glob("unet/*.fp16.*")) else None
        pipe = StableVideoDiffusionPipeline.from_pretrained(
            folder, torch_dtype=dtype, variant=variant, local_files_only=True
        )
        return pipe.to(device)
    if not _HUB_ID.fullmatch(model):
        raise ValueError(f"SVD_MODEL must be a local img2vid-xt folder or a hub id like 'org/name', not {model!r}")
    try:
        pipe = StableVideoDiffusionPipeline.from_pretrained(model, torch_dtype=dtype)
    except OSError as exc:
        raise OSError(f"could not load SVD model {model!r} from the hub (is the VM offline?): {exc}") from exc
    return pipe.to(device)


def render_frames(
    pipe: StableVideoDiffusionPipeline, spec: AnimationSpec, on_step: Callable[[int, int], None] | None = None
) -> list[Image.Image]:
    """Animate `spec.image`; `on_step(done, total)` runs after each denoising step and may raise to stop."""
    image = _fit(spec.image.convert("RGB"), spec.width, spec.height)
    device = pipe._execution_device
    generator = torch.Generator(device="cpu" if device.type != "cuda" else device).manual_seed(spec.seed)

    def callback(_pipe, step: int, _timestep, kwargs: dict) -> dict:
        if on_step is not None:
            on_step(step + 1, spec.steps)
        return kwargs

    output = pipe(
        image, height=spec.height, width=spec.width, num_frames=spec.num_frames,
        num_inference_steps=spec.steps, fps=spec.fps, motion_bucket_id=spec.motion_bucket_id,
        noise_aug_strength=spec.noise_aug_strength, decode_chunk_size=spec.decode_chunk_size,
        generator=generator, callback_on_step_end=callback, output_type="pil",
    )
    return list(output.frames[0])


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, then center-crop: the animation keeps the picture's proportions."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.Resampling.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def residency_policy(free_bytes: int | None, sdxl_bytes: int, svd_bytes: int) -> Literal["resident", "offload"]:
    """Both pipelines stay on the device when free memory holds both plus the activation headroom."""
    if free_bytes is None:  # no GPU: everything is in host memory anyway
        return "resident"
    return "resident" if free_bytes >= sdxl_bytes + svd_bytes + RESIDENCY_HEADROOM_BYTES else "offload"


def pipeline_bytes(pipe) -> int:
    return sum(p.numel() * p.element_size() for c in pipe.components.values()
               if isinstance(c, torch.nn.Module) for p in c.parameters())


def apply_residency(pipe, policy: Literal["resident", "offload"], device: str) -> None:
    if policy == "offload" and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
