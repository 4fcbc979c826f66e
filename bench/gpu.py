"""GPU benchmark of the full-size pipelines: SDXL base 1.0 (1024x1024, 30 steps, CFG) and SVD-XT (25 frames,
25 steps), built from the configs shipped in `gpu_runner/configs/` with random weights (speed does not depend on
weight values), timed under each optimisation side by side in one run.

    python bench/gpu.py                      # on a CUDA machine: every variant, markdown table on stdout
    python bench/gpu.py --json out.json      # also write the figures
    python bench/gpu.py --tiny --device cpu  # the same harness on the tiny models (CI checks it still runs)

For each variant: seconds per generation, peak GPU memory, the share of the measured 790 TFLOP/s peak (SDXL 30
steps with CFG = 416 TFLOP, SVD-XT 25x25 = 4,174 TFLOP), and the largest pixel difference from the SDPA output
with the same seed (a variant that changes the picture beyond fp16 noise is not "faster", it is wrong)."""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

PEAK_TFLOPS = 790.0
SDXL_TFLOP = 416.0
SVD_TFLOP = 4174.0
CONFIGS = Path(__file__).resolve().parents[1] / "gpu_runner" / "configs"


@dataclass
class Row:
    pipeline: str
    variant: str
    seconds: float
    compile_seconds: float
    peak_gib: float
    peak_share: float | None
    max_abs_diff: float | None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0


def _reset_peak(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build_sdxl(device: str, dtype: torch.dtype, tiny: bool, cache: Path):
    from diffusers import StableDiffusionXLPipeline

    if tiny:
        from gpu_runner.tiny_models import tiny_sdxl_pipeline

        return tiny_sdxl_pipeline().to(device, dtype)
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from gpu_runner.sdxl import sdxl_config_folder

    folder = sdxl_config_folder(cache)  # shipped configs + the real CLIP tokenizer, no download
    with torch.device(device):  # random init directly on the GPU: seconds, not minutes
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"), unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
    )
    return pipe.to(device, dtype)


def build_svd(device: str, dtype: torch.dtype, tiny: bool, cache: Path):
    from diffusers import StableVideoDiffusionPipeline

    if tiny:
        from gpu_runner.svd import ensure_tiny_svd

        return StableVideoDiffusionPipeline.from_pretrained(ensure_tiny_svd(cache), local_files_only=True).to(
            device, dtype
        )
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = CONFIGS / "svd"
    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel.from_config(
            UNetSpatioTemporalConditionModel.load_config(folder / "unet")
        )
        vae = AutoencoderKLTemporalDecoder.from_config(AutoencoderKLTemporalDecoder.load_config(folder / "vae"))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(folder / "image_encoder"))
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
        feature_extractor=CLIPImageProcessor.from_pretrained(folder / "feature_extractor"),
    )
    return pipe.to(device, dtype)


def _classic_attention(pipe) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    pipe.unet.set_attn_processor(AttnProcessor())


def _sdpa(pipe) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.unet.set_attn_processor(AttnProcessor2_0())


def _channels_last(pipe) -> None:
    """channels_last for the 2-D convolutions (SVD's UNet also has tensors of other ranks, which stay as they are)."""
    _sdpa(pipe)
    for module in pipe.unet.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.to(memory_format=torch.channels_last)


def _fused_qkv(pipe) -> None:
    _sdpa(pipe)
    pipe.fuse_qkv_projections()


def _compiled(pipe) -> None:
    _channels_last(pipe)
    pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=False)


def _vae_tiling(pipe) -> None:
    _sdpa(pipe)
    pipe.vae.enable_tiling()


Variant = tuple[str, Callable]
SDXL_VARIANTS: list[Variant] = [
    ("fp16, classic attention", _classic_attention),
    ("fp16 + SDPA", _sdpa),
    ("SDPA + channels_last", _channels_last),
    ("SDPA + fused QKV", _fused_qkv),
    ("SDPA + VAE tiling", _vae_tiling),
    ("SDPA + channels_last + torch.compile", _compiled),
]
SVD_VARIANTS: list[Variant] = [
    ("fp16, classic attention", _classic_attention),
    ("fp16 + SDPA", _sdpa),
    ("SDPA + channels_last", _channels_last),
    ("SDPA + channels_last + torch.compile", _compiled),
]


def _run_sdxl(pipe, size: int, steps: int, device: str) -> np.ndarray:
    generator = torch.Generator(device="cpu").manual_seed(0)
    out = pipe("portrait of nova, penguin", negative_prompt="blurry", width=size, height=size,
               num_inference_steps=steps, guidance_scale=7.0, generator=generator, output_type="np")
    _sync(device)
    return out.images[0]


def _run_svd(pipe, size: tuple[int, int], frames: int, steps: int, chunk: int, device: str) -> np.ndarray:
    from PIL import Image

    generator = torch.Generator(device="cpu").manual_seed(0)
    image = Image.fromarray(np.full((size[1], size[0], 3), 127, dtype=np.uint8))
    out = pipe(image, width=size[0], height=size[1], num_frames=frames, num_inference_steps=steps,
               decode_chunk_size=chunk, generator=generator, output_type="np")
    _sync(device)
    return np.asarray(out.frames[0])


def _measure(name: str, variants: list[Variant], build: Callable, run: Callable, flop: float | None,
             device: str) -> list[Row]:
    rows, outputs = [], []
    for label, apply in variants:
        pipe = build()
        apply(pipe)
        _reset_peak(device)
        started = time.perf_counter()
        run(pipe, warmup=True)  # first call: kernels chosen, compile happens here
        compile_seconds = time.perf_counter() - started
        _reset_peak(device)
        started = time.perf_counter()
        output = run(pipe, warmup=False)
        seconds = time.perf_counter() - started
        outputs.append(output)
        rows.append(Row(name, label, round(seconds, 3), round(compile_seconds, 3), round(_peak_gib(device), 2),
                        round(flop / seconds / PEAK_TFLOPS, 4) if flop else None, None))
        print(f"  {name:6s} {label:40s} {seconds:8.2f} s  peak {rows[-1].peak_gib:6.2f} GiB", file=sys.stderr)
        del pipe
    reference = outputs[[label for label, _ in variants].index("fp16 + SDPA")]
    for row, output in zip(rows, outputs):
        if np.isfinite(output).all() and np.isfinite(reference).all():
            row.max_abs_diff = round(float(np.abs(output.astype(np.float32) - reference.astype(np.float32)).max()), 5)
    return rows


def run(device: str, tiny: bool, cache: Path) -> list[Row]:
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    size, steps = (64, 2) if tiny else (1024, 30)
    frames, svd_steps, svd_size = (4, 2, (64, 64)) if tiny else (25, 25, (1024, 576))
    variants_sdxl = SDXL_VARIANTS if device.startswith("cuda") else SDXL_VARIANTS[:5]  # no compile on CPU
    variants_svd = SVD_VARIANTS if device.startswith("cuda") else SVD_VARIANTS[:3]
    rows = _measure(
        "SDXL", variants_sdxl, lambda: build_sdxl(device, dtype, tiny, cache),
        lambda pipe, warmup: _run_sdxl(pipe, size, 2 if warmup else steps, device),
        None if tiny else SDXL_TFLOP, device,
    )
    rows += _measure(
        "SVD-XT", variants_svd, lambda: build_svd(device, dtype, tiny, cache),
        lambda pipe, warmup: _run_svd(pipe, svd_size, frames, 2 if warmup else svd_steps, 8, device),
        None if tiny else SVD_TFLOP, device,
    )
    return rows


def report(rows: list[Row], device_name: str) -> str:
    lines = [f"### Full-size pipelines on {device_name}", "",
             "| pipeline | variant | s / generation | first call (s) | peak GiB | share of 790 TFLOP/s | max abs diff vs SDPA |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = f"{r.peak_share * 100:.1f} %" if r.peak_share is not None else "-"
        diff = f"{r.max_abs_diff:.4f}" if r.max_abs_diff is not None else "-"
        lines.append(f"| {r.pipeline} | {r.variant} | {r.seconds:.2f} | {r.compile_seconds:.1f} | {r.peak_gib:.2f} "
                     f"| {share} | {diff} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else None)
    parser.add_argument("--tiny", action="store_true", help="the tiny models (checks the harness, not the GPU)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "soul-bench-models")
    args = parser.parse_args(argv)
    if args.device is None:
        print("no CUDA device: run with --tiny --device cpu to check the harness", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (tiny models)"
    rows = run(args.device, args.tiny, args.cache)
    print(report(rows, name))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
