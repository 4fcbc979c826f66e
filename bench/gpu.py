"""GPU benchmark of the full-size pipelines: SDXL base 1.0 (1024x1024, 30 steps, CFG) and SVD-XT (25 frames,
25 steps), built from the configs shipped in `gpu_runner/pipelines/configs/` with random weights (speed does not depend on
weight values), timed under each optimisation side by side in one run.

    python bench/gpu.py                      # on a CUDA machine: every variant, markdown table on stdout
    python bench/gpu.py --json out.json      # also write the figures
    python bench/gpu.py --tiny --device cpu  # the same harness on the tiny models (CI checks it still runs)
    python bench/gpu.py --cold-start         # process start -> first image, with and without saved artifacts

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
CONFIGS = Path(__file__).resolve().parents[1] / "gpu_runner" / "pipelines" / "configs"


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
        from gpu_runner.pipelines.tiny import tiny_sdxl_pipeline

        return tiny_sdxl_pipeline().to(device, dtype)
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from gpu_runner.pipelines.clip import sdxl_config_folder

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
        from gpu_runner.pipelines.tiny import ensure_tiny_svd

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


def _regional(pipe) -> None:
    """What the runner does with SOUL_COMPILE=regional (gpu_runner/pipelines/acceleration.py)."""
    from gpu_runner.pipelines.acceleration import compile_module

    _channels_last(pipe)
    compile_module(pipe.unet, "regional")


def _fp8(pipe) -> None:
    """What the runner does with SOUL_QUANTIZE=fp8: torchao's dynamic fp8 on the UNet's linear layers."""
    from gpu_runner.pipelines.acceleration import quantize_fp8

    _channels_last(pipe)
    quantize_fp8(pipe.unet)


def _fp8_regional(pipe) -> None:
    from gpu_runner.pipelines.acceleration import compile_module

    _fp8(pipe)
    compile_module(pipe.unet, "regional")


def _channels_last_fused_qkv(pipe) -> None:
    _channels_last(pipe)
    pipe.fuse_qkv_projections()


def _vae_tiling(pipe) -> None:
    _sdpa(pipe)
    pipe.vae.enable_tiling()


def _slots(cache: Path, rank: int | None, ip_adapter: bool, compiled: bool = False, fp8: bool = False) -> Callable:
    """What a compiled runner does at start (startup.prepare_sdxl): attention and layout, fp8 if asked, then its
    adapters' `before_compile`, the LoRA slot at `rank` (None: no slot) and the IP-Adapter (random weights in the
    real layout, a tiny image encoder: the UNet's cost is the same), then the regional compile. Rendered through the
    runner's `prepare`, at rest (no LoRA, no references: scale 0), so the picture must be the reference's and the
    time is the slots' price."""

    def apply(pipe) -> None:
        from gpu_runner.pipelines.acceleration import compile_module, quantize_fp8
        from gpu_runner.pipelines.adapters import AdapterHost

        (_channels_last if compiled else _sdpa)(pipe)
        if fp8:
            quantize_fp8(pipe.unet)
        host = AdapterHost(cache_dir=cache / f"slots-{pipe.unet.config.cross_attention_dim}", ip_adapter_model=None,
                           ip_adapter_weight_name="ip-adapter.safetensors", resident=1, budget_bytes=1 << 30,
                           hotswap=rank is not None, hotswap_rank=rank or 1, tiny_ip_adapter=ip_adapter)
        if rank is not None:
            host.prepare_slot(pipe)
        if ip_adapter:
            host.prepare_ip_slot(pipe)
        if compiled:
            compile_module(pipe.unet, "regional")
        pipe._soul_bench_adapters = host

    return apply


def slot_variants(cache: Path) -> list[tuple[str, Callable]]:
    return [
        ("fp16 + SDPA + LoRA slot r128 + IP-Adapter, at rest", _slots(cache, 128, True)),
        ("SDPA + channels_last + regional compile + LoRA slot r128", _slots(cache, 128, False, compiled=True)),
        ("SDPA + channels_last + regional compile + LoRA slot r32", _slots(cache, 32, False, compiled=True)),
        ("SDPA + channels_last + regional compile + IP-Adapter", _slots(cache, None, True, compiled=True)),
        ("SDPA + channels_last + regional compile + LoRA slot r128 + IP-Adapter",
         _slots(cache, 128, True, compiled=True)),
        ("SDPA + channels_last + fp8 + regional compile + LoRA slot r128 + IP-Adapter",
         _slots(cache, 128, True, compiled=True, fp8=True)),
    ]


Variant = tuple[str, Callable]
SDXL_VARIANTS: list[Variant] = [
    ("fp16, classic attention", _classic_attention),
    ("fp16 + SDPA", _sdpa),
    ("SDPA + channels_last", _channels_last),
    ("SDPA + fused QKV", _fused_qkv),
    ("SDPA + channels_last + fused QKV", _channels_last_fused_qkv),
    ("SDPA + VAE tiling", _vae_tiling),
    ("fp16 + SDPA, built again (control: same weights, same seed)", _sdpa),
    ("SDPA + channels_last + torch.compile", _compiled),
    ("SDPA + channels_last + regional compile", _regional),
    ("SDPA + channels_last + fp8", _fp8),
    ("SDPA + channels_last + fp8 + regional compile", _fp8_regional),
]
SVD_VARIANTS: list[Variant] = [
    ("fp16, classic attention", _classic_attention),
    ("fp16 + SDPA", _sdpa),
    ("SDPA + channels_last", _channels_last),
    ("SDPA + channels_last + torch.compile", _compiled),
    ("SDPA + channels_last + regional compile", _regional),
]


def _run_sdxl(pipe, size: int, steps: int, device: str) -> np.ndarray:
    generator = torch.Generator(device="cpu").manual_seed(0)
    extra = {}
    if (adapters := getattr(pipe, "_soul_bench_adapters", None)) is not None:  # a slots variant: as the runner calls
        from gpu_runner.pipelines.specs import RenderSpec

        spec = RenderSpec("portrait of nova, penguin", "blurry", size, size, steps, 7.0, 0)
        extra = adapters.prepare(pipe, spec, lambda name: b"").kwargs
    out = pipe("portrait of nova, penguin", negative_prompt="blurry", width=size, height=size,
               num_inference_steps=steps, guidance_scale=7.0, generator=generator, output_type="np", **extra)
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
             device: str, sink: Callable[[Row], None] = lambda row: None) -> list[Row]:
    rows, outputs = [], []
    for label, apply in variants:
        torch.manual_seed(0)  # the same random weights for every variant, so the pixel differences mean something
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
        sink(rows[-1])
        del pipe
    labels = [label for label, _ in variants]
    if "fp16 + SDPA" not in labels:
        return rows
    reference = outputs[labels.index("fp16 + SDPA")]  # the first one
    for row, output in zip(rows, outputs):
        if np.isfinite(output).all() and np.isfinite(reference).all():
            row.max_abs_diff = round(float(np.abs(output.astype(np.float32) - reference.astype(np.float32)).max()), 5)
    return rows


@dataclass
class BatchRow:
    batch: int
    seconds: float
    images_per_s: float
    seconds_per_image: float
    speedup_vs_batch_1: float
    peak_gib: float


def measure_batches(device: str, tiny: bool, cache: Path, batches: list[int], size: int, steps: int,
                    sink: Callable[[BatchRow], None] = lambda row: None) -> list[BatchRow]:
    """SDXL throughput at each batch size with the runner's own settings (`optimize_for_device`): one pipeline
    call per batch, a list of prompts and one seeded generator per item, as the runner's batched render does."""
    from gpu_runner.pipelines.device import DeviceChoice
    from gpu_runner.pipelines.sdxl import optimize_for_device

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = build_sdxl(device, dtype, tiny, cache)
    optimize_for_device(pipe, DeviceChoice(device=device, dtype=dtype, name=device))
    rows: list[BatchRow] = []

    def call(batch: int, n_steps: int) -> None:
        generators = [torch.Generator(device="cpu").manual_seed(i) for i in range(batch)]
        pipe([f"portrait of nova {i}, penguin" for i in range(batch)], negative_prompt=["blurry"] * batch,
             width=size, height=size, num_inference_steps=n_steps, guidance_scale=7.0, generator=generators,
             output_type="np")
        _sync(device)

    for batch in batches:
        call(batch, 2)
        _reset_peak(device)
        started = time.perf_counter()
        call(batch, steps)
        seconds = time.perf_counter() - started
        base = rows[0].images_per_s if rows else batch / seconds
        row = BatchRow(batch, round(seconds, 3), round(batch / seconds, 3), round(seconds / batch, 3),
                       round(batch / seconds / base, 3), round(_peak_gib(device), 2))
        rows.append(row)
        print(f"  SDXL batch {batch}: {seconds:.2f} s, {row.images_per_s:.3f} images/s", file=sys.stderr)
        sink(row)
    return rows


def fp8_capable(device: str) -> bool:
    """fp8 variants run only where the runner would use them: CUDA compute capability >= 8.9 with torchao."""
    import importlib.util

    from gpu_runner.pipelines.acceleration import FP8_MIN_CAPABILITY

    return (device.startswith("cuda") and torch.cuda.get_device_capability() >= FP8_MIN_CAPABILITY
            and importlib.util.find_spec("torchao") is not None)


def _select(variants: list[Variant], compile_mode: str, device: str = "cpu") -> list[Variant]:
    if not fp8_capable(device):
        variants = [v for v in variants if "fp8" not in v[0]]
    if compile_mode == "skip":
        return [v for v in variants if "compile" not in v[0]]
    if compile_mode == "only":
        return [v for v in variants if "compile" in v[0]]
    return variants


def run(device: str, tiny: bool, cache: Path, pipelines: tuple[str, ...] = ("sdxl", "svd"),
        compile_mode: str = "all", sink: Callable[[Row], None] = lambda row: None) -> list[Row]:
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    size, steps = (64, 2) if tiny else (1024, 30)
    frames, svd_steps, svd_size = (4, 2, (64, 64)) if tiny else (25, 25, (1024, 576))
    if not device.startswith("cuda"):  # no torch.compile on CPU
        compile_mode = "skip"
    rows: list[Row] = []
    if "sdxl" in pipelines:
        rows += _measure(
            "SDXL", _select(SDXL_VARIANTS + slot_variants(cache), compile_mode, device),
            lambda: build_sdxl(device, dtype, tiny, cache),
            lambda pipe, warmup: _run_sdxl(pipe, size, 2 if warmup else steps, device),
            None if tiny else SDXL_TFLOP, device, sink,
        )
    if "svd" in pipelines:
        rows += _measure(
            "SVD-XT", _select(SVD_VARIANTS, compile_mode, device), lambda: build_svd(device, dtype, tiny, cache),
            lambda pipe, warmup: _run_svd(pipe, svd_size, frames, 2 if warmup else svd_steps, 8, device),
            None if tiny else SVD_TFLOP, device, sink,
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


# --- cold start: process start -> first image -----------------------------------------------------------------------

# One start of the runner's own loading code (ModelHost: load, quantize, compile or load artifacts, warm-up) in a
# fresh process, then the first image a job would get. Settings come from the environment, as on a VM.
COLD_CHILD = """
import json, sys, time
from gpu_runner.pipelines.host import ModelHost
from gpu_runner.pipelines.specs import RenderSpec
from gpu_runner.settings import RunnerSettings
size, steps = int(sys.argv[1]), int(sys.argv[2])
host = ModelHost(RunnerSettings())
host.warm_sdxl()
host.render_plain(host.sdxl(), [RenderSpec("portrait of nova, penguin", "blurry", size, size, steps, 7.0, 0)])
print(json.dumps({"first_image_at": time.time(), "startup": host.startup.snapshot(),
                  "acceleration": host.acceleration.as_dict()}))
"""

# name -> (SOUL_COMPILE, SOUL_QUANTIZE, artifacts: "fresh" = an empty folder, "saved" = the previous start's)
COLD_STARTS = {
    "eager": ("off", "none", "fresh"),
    "regional-fresh": ("regional", "none", "fresh"),
    "regional-saved": ("regional", "none", "saved"),
    "fp8-regional-fresh": ("regional", "fp8", "fresh"),
    "fp8-regional-saved": ("regional", "fp8", "saved"),
}


@dataclass
class ColdRow:
    scenario: str
    seconds_to_first_image: float
    phases: dict
    artifacts: str
    acceleration: dict


def measure_cold_starts(device: str, tiny: bool, cache: Path, scenarios: list[str],
                        sink: Callable[[ColdRow], None] = lambda row: None) -> list[ColdRow]:
    import os
    import subprocess

    size, steps = (64, 2) if tiny else (1024, 30)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SOUL_MODEL_CACHE_DIR": str(cache),
           "SOUL_COMPILE_SHAPES": f"{size}x{size}:1", "FORCE_CPU": "false" if device.startswith("cuda") else "true"}
    if tiny:
        from gpu_runner.pipelines.tiny import ensure_tiny_sdxl

        ensure_tiny_sdxl(cache)  # built once here, so no start pays for it
        env.pop("SDXL_MODEL", None)
    else:  # the full-size configs with random weights, written once like real weights on the VM's disk
        folder = cache / "sdxl-random-fp16"
        if not (folder / "model_index.json").exists():
            torch.manual_seed(0)
            build_sdxl(device, torch.float16, False, cache).save_pretrained(folder)
            gc.collect()
            torch.cuda.empty_cache()
        env["SDXL_MODEL"] = str(folder)
    rows: list[ColdRow] = []
    root = Path(tempfile.mkdtemp(prefix="soul-cold-"))
    for index, name in enumerate(scenarios):
        compile_mode, quantize, artifacts = COLD_STARTS[name]
        if quantize == "fp8" and not fp8_capable(device):
            continue
        folder = root / f"artifacts-{compile_mode}-{quantize}"
        if artifacts == "fresh":
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        child_env = {**env, "SOUL_COMPILE": compile_mode, "SOUL_QUANTIZE": quantize,
                     "SOUL_COMPILE_CACHE_DIR": str(folder),
                     "TORCHINDUCTOR_CACHE_DIR": str(root / f"inductor-{index}")}  # nothing but our artifacts carries over
        started = time.time()
        done = subprocess.run([sys.executable, "-c", COLD_CHILD, str(size), str(steps)], env=child_env,
                              capture_output=True, text=True, timeout=3600, cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0:
            raise RuntimeError(f"cold start {name!r} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        row = ColdRow(name, round(result["first_image_at"] - started, 2),
                      {p["phase"]: p["seconds"] for p in result["startup"]["phases"]},
                      result["startup"].get("artifacts", ""), result["acceleration"])
        rows.append(row)
        print(f"  cold start {name:34s} {row.seconds_to_first_image:8.1f} s  {row.phases}", file=sys.stderr)
        sink(row)
    return rows


def cold_report(rows: list[ColdRow], device_name: str, tiny: bool) -> str:
    what = "tiny SDXL 64x64, 2 steps" if tiny else "SDXL 1024x1024, 30 steps, CFG"
    lines = [f"### Cold start on {device_name}: process start -> first image ({what})", "",
             "| scenario | s to first image | load | load artifacts | compile | save artifacts | warm-up | artifacts |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        cells = [f"{r.phases[p]:.1f}" if p in r.phases else "-"
                 for p in ("load", "load_artifacts", "compile", "save_artifacts", "warmup")]
        lines.append(f"| {r.scenario} | {r.seconds_to_first_image:.1f} | {' | '.join(cells)} | {r.artifacts} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else None)
    parser.add_argument("--tiny", action="store_true", help="the tiny models (checks the harness, not the GPU)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "soul-bench-models")
    parser.add_argument("--pipelines", default="sdxl,svd", help="comma-separated: sdxl, svd (none: only batches)")
    parser.add_argument("--compile", choices=("all", "skip", "only"), default="all",
                        help="skip: every variant but torch.compile; only: the torch.compile variants alone")
    parser.add_argument("--batches", default="", help="e.g. 1,2,4: SDXL throughput per batch size, runner settings")
    parser.add_argument("--cold-start", nargs="?", const=",".join(COLD_STARTS), default="",
                        help=f"process start -> first image; optionally a comma-separated subset of: "
                             f"{', '.join(COLD_STARTS)} (fresh = no saved artifacts)")
    args = parser.parse_args(argv)
    if args.device is None:
        print("no CUDA device: run with --tiny --device cpu to check the harness", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (tiny models)"
    figures: dict = {"device": name, "rows": [], "batches": [], "cold_starts": []}

    def save() -> None:  # after every figure, so a run stopped at its time limit keeps what it measured
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))

    def keep(key: str):
        return lambda row: (figures[key].append(asdict(row)), save())

    if args.cold_start:
        scenarios = [s.strip() for s in args.cold_start.split(",") if s.strip()]
        unknown = [s for s in scenarios if s not in COLD_STARTS]
        if unknown:
            parser.error(f"unknown cold-start scenario(s) {unknown}; known: {list(COLD_STARTS)}")
        cold = measure_cold_starts(args.device, args.tiny, args.cache, scenarios, keep("cold_starts"))
        figures["cold_starts"] = [asdict(r) for r in cold]
        save()
        print(cold_report(cold, name, args.tiny))
        return 0
    pipelines = tuple(p for p in args.pipelines.split(",") if p)
    rows = run(args.device, args.tiny, args.cache, pipelines, args.compile, keep("rows"))
    if rows:
        figures["rows"] = [asdict(r) for r in rows]  # with the differences from the SDPA reference filled in
        save()
        print(report(rows, name))
    if args.batches:
        size, steps = (64, 2) if args.tiny else (1024, 30)
        batch_rows = measure_batches(args.device, args.tiny, args.cache,
                                     [int(b) for b in args.batches.split(",")], size, steps, keep("batches"))
        print(batch_report(batch_rows, name, size, steps))
    return 0


def batch_report(rows: list[BatchRow], device_name: str, size: int, steps: int) -> str:
    lines = [f"### SDXL {size}x{size}, {steps} steps, batch sizes on {device_name} (runner settings)", "",
             "| batch | s / call | images / s | s / image | throughput vs batch 1 | peak GiB |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.batch} | {r.seconds:.2f} | {r.images_per_s:.3f} | {r.seconds_per_image:.3f} "
              f"| {r.speedup_vs_batch_1:.2f}x | {r.peak_gib:.2f} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
