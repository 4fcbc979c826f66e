"""Cost of the content policy's checker and of previews per image, side by side in one run: the same SDXL render
timed alone, with previews every N steps (the render call's latent decode, which is what the device pays; the WebP
encode and upload run on the publisher thread and are timed apart), and the checker's call (batch of 1 and of 4,
per image), all through the runner's own functions (`render_images`, `score_images`, `encode_preview`).

    python bench/safety.py                       # tiny models on the CPU (256 px, 8 steps)
    python bench/safety.py --full --device cuda  # SDXL 1024 px 30 steps + full-size checker, random weights
    python bench/safety.py --json out.json

Rounds interleave the variants (render, render+previews, checker) so machine load hits all of them alike; the
figures are medians. Ratios, not absolute times, are the result on a shared machine."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_runner.pipelines.previews import Previews, linear_decoder, taesd_decoder  # noqa: E402
from gpu_runner.pipelines.safety import LoadedChecker, load_checker, score_images  # noqa: E402
from gpu_runner.pipelines.sdxl import render_images  # noqa: E402
from gpu_runner.pipelines.specs import RenderSpec  # noqa: E402
from gpu_runner.stages.previews import encode_preview  # noqa: E402


def full_checker(device: str, dtype: torch.dtype) -> LoadedChecker:
    """The real checker's shape (CLIP ViT-L/14 vision tower, 768-d projection) with random weights."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig
    from transformers import CLIPImageProcessorPil

    config = CLIPConfig(vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                       "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
                        projection_dim=768)
    model = StableDiffusionSafetyChecker(config).to(device, dtype).eval()
    return LoadedChecker(model=model, processor=CLIPImageProcessorPil(), name="sd-safety-checker (random)",
                         device=device, dtype=dtype)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="full-size SDXL and checker (random weights)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", default="1,4", help="preview intervals to measure, in steps")
    parser.add_argument("--taesd", action="store_true", help="also TAESD-XL (random weights, default config)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = args.device
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    cache = Path(tempfile.gettempdir()) / "soul-bench-models"
    if args.full:
        from bench.gpu import build_sdxl

        pipe = build_sdxl(device, dtype, tiny=False, cache=cache)
        checker, size, steps = full_checker(device, dtype), 1024, 30
    else:
        from gpu_runner.pipelines.tiny import tiny_sdxl_pipeline

        torch.set_num_threads(1)  # as the runner does for the tiny models (pipelines/sdxl.py)
        pipe = tiny_sdxl_pipeline().to(device, dtype)
        checker, size, steps = load_checker(None, cache, device, dtype), 256, 8
    pipe.set_progress_bar_config(disable=True)
    spec = RenderSpec(prompt="portrait of nova, penguin", negative_prompt="", width=size, height=size, steps=steps,
                      guidance=7.0, seed=1)
    decoders = {"linear": linear_decoder(256)}
    if args.taesd:
        from diffusers import AutoencoderTiny

        decoders["taesd"] = taesd_decoder(AutoencoderTiny().to(device, dtype).eval(), 256)
    variants: dict[str, Previews | None] = {"render": None}
    previews: list = []
    for every in (int(e) for e in args.every.split(",") if e.strip()):
        for name, decode in decoders.items():
            variants[f"render + {name} previews every {every}"] = Previews(
                every=every, decode=decode, emit=lambda i, s, n, image: previews.append(image))
    times: dict[str, list[float]] = {name: [] for name in variants}
    times.update({"checker, batch 1 (per image)": [], "checker, batch 4 (per image)": [], "preview WebP encode": []})
    render_images(pipe, [spec])  # warm-up
    image = None
    for _ in range(args.rounds):
        for name, hook in variants.items():
            _sync(device)
            started = time.perf_counter()
            [image] = render_images(pipe, [spec], previews=hook)
            _sync(device)
            times[name].append(time.perf_counter() - started)
        for batch in (1, 4):
            started = time.perf_counter()
            score_images(checker, [image] * batch)
            _sync(device)
            times[f"checker, batch {batch} (per image)"].append((time.perf_counter() - started) / batch)
        if previews:
            started = time.perf_counter()
            encode_preview(previews[-1], 60)
            times["preview WebP encode"].append(time.perf_counter() - started)
    base = statistics.median(times["render"])
    rows = [{"what": name, "median_s": round(statistics.median(values), 5),
             "share_of_render": round(statistics.median(values) / base, 4)} for name, values in times.items() if values]
    print(f"{'full SDXL' if args.full else 'tiny SDXL'} {size}px {steps} steps on {device}, {args.rounds} rounds")
    print("| what | median s | × / share of the render |\n|---|---|---|")
    for row in rows:
        print(f"| {row['what']} | {row['median_s']} | {row['share_of_render']} |")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "size": size, "steps": steps, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
