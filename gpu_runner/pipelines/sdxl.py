"""Stable Diffusion XL in the runner: loading (the offline tiny stand-in, a diffusers folder, or one original
`.safetensors` checkpoint described by the SDXL base 1.0 configs shipped in `configs/sdxl/`, see `clip.py`) and
rendering batches of `RenderSpec`s (pipelines/specs.py) with per-step progress. Writing a pipeline back out as a
single file is `single_file.py`'s."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from gpu_runner.errors import NonFiniteRender
from gpu_runner.pipelines.clip import sdxl_config_folder
from gpu_runner.pipelines.device import DeviceChoice
from gpu_runner.pipelines.previews import Previews
from gpu_runner.pipelines.prompts import encode_prompts, window_count
from gpu_runner.pipelines.specs import RenderSpec, batch_key


# --- rendering ----------------------------------------------------------------------------------------------------


def render_image(
    pipe: StableDiffusionXLPipeline, spec: RenderSpec, on_step: Callable[[int, int], None] | None = None
) -> Image.Image:
    """Render `spec`. `on_step(done, total)` runs after each denoising step; whatever it raises (a cancel, a lost
    lease) stops the render and propagates. The same spec gives the same image on the same device and weights."""
    return render_images(pipe, [spec], on_step)[0]


def prompt_arguments(pipe: StableDiffusionXLPipeline, specs: list[RenderSpec]) -> dict:
    """THE place where text becomes the pipeline's prompt arguments: embeddings of 77-token windows
    (`gpu_runner/pipelines/prompts.py`), so a long cue never pushes the soul's style suffix out of CLIP's window. An empty
    negative prompt gives zero embeddings, as SDXL base was trained for "no negative prompt"."""
    return encode_prompts(pipe, [spec.prompt for spec in specs], [spec.negative_prompt for spec in specs])


def render_images(
    pipe: StableDiffusionXLPipeline, specs: list[RenderSpec], on_step: Callable[[int, int], None] | None = None,
    previews: Previews | None = None,
    prepare: Callable[[StableDiffusionXLPipeline], dict] | None = None,
) -> list[Image.Image]:
    """Render several specs with as few pipeline calls as keep each image independent of its partners (they must
    share `batch_key`). Each item has its own seeded generator, so item i is the image its spec renders alone.
    Items whose prompts need a different number of 77-token windows go in separate calls: padding a shorter
    prompt with empty windows would change its conditioning. With `previews`, every `previews.every` steps each
    item's latents are decoded to a small preview and emitted under the item's index in `specs`. `prepare(pipe)`
    runs under the render lock before the calls (adapters, references, scheduler: gpu_runner/pipelines/adapters.py)
    and returns extra pipeline arguments for every call."""
    assert specs and len({batch_key(spec) for spec in specs}) == 1, "a batch needs one size, steps and guidance"
    images: dict[int, Image.Image] = {}
    # One render at a time per pipeline: a render mutates what it shares with any other (the scheduler's
    # timesteps, the pipeline's per-call fields, the tokenizers' padding mode, and an fp16 VAE upcast to fp32 for
    # decoding). One GPU gains nothing from interleaving two renders anyway.
    with _render_lock(pipe), torch.inference_mode():
        extra = prepare(pipe) if prepare is not None else {}
        groups: dict[int, list[int]] = {}
        for index, spec in enumerate(specs):
            groups.setdefault(window_count(pipe, spec.prompt, spec.negative_prompt), []).append(index)
        for indexes in groups.values():
            group = [specs[i] for i in indexes]
            for i, image in zip(indexes, _render_call(pipe, group, on_step, previews, indexes, extra), strict=True):
                images[i] = image
    return [images[i] for i in range(len(specs))]


def _render_call(
    pipe: StableDiffusionXLPipeline, specs: list[RenderSpec], on_step: Callable[[int, int], None] | None,
    previews: Previews | None = None, indexes: list[int] | None = None,
    extra: dict | None = None,
) -> list[Image.Image]:
    first = specs[0]
    device = pipe.device if pipe.device.type == "cuda" else "cpu"
    generators = [torch.Generator(device=device).manual_seed(spec.seed) for spec in specs]

    def step_end(pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        if step_index + 1 == pipeline.num_timesteps and not torch.isfinite(callback_kwargs["latents"]).all():
            raise NonFiniteRender("the render's latents hold NaN or infinite values (a broken LoRA or weights): "
                                  "no image was stored")
        if on_step is not None:
            on_step(step_index + 1, pipeline.num_timesteps)
        if previews is not None and previews.due(step_index + 1, pipeline.num_timesteps):
            for item, image in enumerate(previews.decode(callback_kwargs["latents"])):
                previews.emit(indexes[item] if indexes else item, step_index + 1, pipeline.num_timesteps, image)
        return callback_kwargs

    result = pipe(
        **prompt_arguments(pipe, specs),
        width=first.width,
        height=first.height,
        num_inference_steps=first.steps,
        guidance_scale=first.guidance,
        generator=generators,
        callback_on_step_end=step_end,
        output_type="pil",
        **(extra or {}),
    )
    return list(result.images)


def _render_lock(pipe: StableDiffusionXLPipeline) -> threading.Lock:
    # Kept on the pipeline itself so it lives and dies with it; dict.setdefault is atomic, so two first renders
    # cannot create two locks.
    return pipe.__dict__.setdefault("_soul_render_lock", threading.Lock())


# --- loading ------------------------------------------------------------------------------------------------------


def load_sdxl(
    model: str | None, cache_dir: Path, device: DeviceChoice, *, config: Path | None = None
) -> StableDiffusionXLPipeline:
    """Load SDXL onto `device`, never touching the network.

    `model` is None for the tiny stand-in (built under `cache_dir` on first use), a diffusers folder, or an
    original single `.safetensors` checkpoint. `config` names the diffusers folder whose configs describe that
    checkpoint; by default the shipped SDXL base 1.0 configs."""
    cache_dir = Path(cache_dir)
    if model is None:
        from gpu_runner.pipelines.tiny import ensure_tiny_sdxl  # deferred: building it is rare

        pipe = StableDiffusionXLPipeline.from_pretrained(
            ensure_tiny_sdxl(cache_dir), dtype=device.dtype, local_files_only=True
        )
        if not device.is_cuda:
            # The tiny model's ops are too small to split across threads, and torch's spinning OpenMP pool makes
            # them crawl when the cores are busy: a 2-step 64 px render took 0.1 s on one thread but 3-10 s on two
            # while other processes loaded the 2-core machine. (Process-wide; the tiny SVD gains the same.)
            torch.set_num_threads(1)
    else:
        path = Path(model).expanduser()
        if path.is_dir():
            pipe = StableDiffusionXLPipeline.from_pretrained(
                path, dtype=device.dtype, local_files_only=True, variant=_variant(path, device.dtype)
            )
        elif path.is_file() and path.suffix == ".safetensors":
            config_folder = Path(config) if config is not None else sdxl_config_folder(cache_dir)
            pipe = StableDiffusionXLPipeline.from_single_file(
                str(path), config=str(config_folder), dtype=device.dtype, local_files_only=True
            )
        elif path.exists():
            raise ValueError(f"SDXL model must be a diffusers folder or a .safetensors file, got {path}")
        else:
            raise FileNotFoundError(f"SDXL model not found: {path}")
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device.device)
    optimize_for_device(pipe, device)
    return pipe


def _variant(folder: Path, dtype: torch.dtype) -> str | None:
    """The fp16 variant when the folder ships one and we want half precision (or it is all the folder ships)."""
    unet = folder / "unet"
    has_fp16 = any(unet.glob("*.fp16.safetensors")) or any(unet.glob("*.fp16.bin"))
    has_full = any(p for p in unet.glob("diffusion_pytorch_model*") if ".fp16." not in p.name)
    return "fp16" if has_fp16 and (dtype == torch.float16 or not has_full) else None


def optimize_for_device(pipe: StableDiffusionXLPipeline, device: DeviceChoice) -> None:
    """Speed settings that pay off on a GPU; the CPU path is left exactly as diffusers builds it."""
    if not device.is_cuda:
        return
    # Attention already runs on torch's fused scaled_dot_product_attention (diffusers' default on torch 2).
    # Convolutions in fp16 are faster in NHWC on tensor cores.
    pipe.unet.to(memory_format=torch.channels_last)
    # Tiling only engages when the latent exceeds the VAE's tile (1024 px for SDXL): bigger images decode in tiles
    # instead of running out of memory; 1024 px and below decode exactly as before.
    pipe.vae.enable_tiling()
