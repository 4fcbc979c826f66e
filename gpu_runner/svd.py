"""The Stable Video Diffusion stage: the tiny offline stand-in, loading real SVD-XT weights, rendering frames.

Memory policy (`residency_policy`, applied by `models.ModelHost`): SDXL (~7 GB in fp16) is the hot path and
stays resident. SVD-XT (~4.5 GB in fp16, plus up to ~10 GB of activations at 25 frames) is loaded into host
memory first and joins it on the GPU when the free memory holds its weights plus that headroom, so an animation
right after an image pays no transfer. Otherwise SVD runs with `enable_model_cpu_offload`: each component moves
to the GPU only while it works, which costs host-to-device copies per job instead of an out-of-memory error."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from gpu_runner.tiny_models import save_pipeline

TINY_SVD_NAME = "tiny-svd-v2"  # bump when the architecture below changes: it names the cache folder
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs" / "svd"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Free memory kept beyond both pipelines' weights: activations of a 25-frame SVD decode at 1024x576.
RESIDENCY_HEADROOM_BYTES = 10 * 2**30


@dataclass(frozen=True)
class AnimationSpec:
    image: Image.Image
    num_frames: int
    fps: int
    width: int
    height: int
    steps: int
    motion_bucket_id: int
    noise_aug_strength: float
    decode_chunk_size: int
    seed: int

    def __post_init__(self) -> None:
        # Concise errors instead of silent fixes (diffusers' check_inputs style).
        checks = [
            (2 <= self.num_frames <= 64, "num_frames must be between 2 and 64"),
            (1 <= self.fps <= 60, "fps must be between 1 and 60"),
            (self.width >= 64 and self.width % 8 == 0, "width must be a multiple of 8, at least 64"),
            (self.height >= 64 and self.height % 8 == 0, "height must be a multiple of 8, at least 64"),
            (self.steps >= 1, "steps must be at least 1"),
            (0 <= self.motion_bucket_id <= 1023, "motion_bucket_id must be between 0 and 1023"),
            (0.0 <= self.noise_aug_strength <= 1.0, "noise_aug_strength must be between 0 and 1"),
            (self.decode_chunk_size >= 1, "decode_chunk_size must be at least 1"),
            (0 <= self.seed < 2**63, "seed must be in [0, 2**63)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def tiny_svd_pipeline(seed: int = 0) -> StableVideoDiffusionPipeline:
    """A deterministic random-weight SVD with the real architecture's shape, small enough for a CPU."""
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=8,
        projection_class_embeddings_input_dim=96,  # 3 conditioning numbers x addition_time_embed_dim
        addition_time_embed_dim=32,
    )
    torch.manual_seed(seed + 1)
    # Four levels, as in the real VAE: latents are 1/8 of the frame, so the UNet's attention stays small.
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 32, 64, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        layers_per_block=1,
        latent_channels=4,
    )
    torch.manual_seed(seed + 2)
    image_encoder = CLIPVisionModelWithProjection(
        # The pipeline resizes the conditioning image to 224 px before encoding it, as for the real ViT-H/14.
        CLIPVisionConfig(hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                         image_size=224, intermediate_size=37, patch_size=14)
    )
    scheduler = EulerDiscreteScheduler.from_pretrained(SHIPPED_CONFIGS / "scheduler")
    return StableVideoDiffusionPipeline(
        vae=vae.eval(), image_encoder=image_encoder.eval(), unet=unet.eval(), scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}),
    )


def build_tiny_svd(dest: Path, seed: int = 0) -> Path:
    return save_pipeline(tiny_svd_pipeline(seed), dest)


def ensure_tiny_svd(cache_dir: Path) -> Path:
    folder = Path(cache_dir) / TINY_SVD_NAME
    if not (folder / "model_index.json").is_file():
        build_tiny_svd(folder)
    return folder


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
