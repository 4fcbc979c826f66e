"""What a LoRA switch costs against a resident adapter, side by side in one run on the tiny SDXL (CPU) — or, with
`--sdxl-random`, on SDXL base 1.0's architecture with random weights on a GPU (no weights needed) and a rank-32
LoRA. Every render goes through the runner's own `AdapterHost` (gpu_runner/pipelines/adapters.py):

- `base`: no adapter;
- `resident`: the same adapter every render (loaded once, then reused);
- `switch`: a different adapter every render with one resident slot (load + evict each time);
- `hotswap`: a different adapter every render, swapped in place into one slot (what a compiled UNet uses).

Reports the median render time of each and its ratio to `resident`, plus the loads counted by the host.

    python bench/adapters.py [--renders 6] [--rank 4] [--side 256] [--steps 4] [--json OUT]
    python bench/adapters.py --sdxl-random --rank 32 --side 1024 --steps 30   # on a GPU"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gpu_runner.pipelines.adapters import AdapterHost  # noqa: E402
from gpu_runner.pipelines.device import DeviceChoice, select_device  # noqa: E402
from gpu_runner.pipelines.sdxl import load_sdxl, render_images  # noqa: E402
from gpu_runner.pipelines.specs import LoraChoice, RenderSpec  # noqa: E402
from gpu_runner.pipelines.tiny_adapters import lora_bytes  # noqa: E402


def random_sdxl(device: DeviceChoice, cache: Path):
    """SDXL base 1.0's four models from the shipped configs, random weights, straight onto the device."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from gpu_runner.pipelines.clip import sdxl_config_folder

    configs = sdxl_config_folder(cache)
    with torch.device(device.device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_json_file(configs / "text_encoder" / "config.json"))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_json_file(configs / "text_encoder_2" / "config.json"))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text, text_encoder_2=text_2, unet=unet,
        tokenizer=CLIPTokenizer.from_pretrained(configs / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(configs / "tokenizer_2"),
        scheduler=EulerDiscreteScheduler.from_pretrained(configs / "scheduler"),
    )
    pipe.to(device.device, device.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--renders", type=int, default=6)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sdxl-random", action="store_true", help="SDXL's architecture, random weights (GPU)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="soul-bench-adapters-"))
    device = select_device(False, 0.9) if args.sdxl_random else DeviceChoice("cpu", torch.float32, "cpu")
    pipe = random_sdxl(device, cache) if args.sdxl_random else load_sdxl(None, cache, device)
    adapters = args.renders + 1
    objects = {f"loras/{i}.safetensors": lora_bytes(pipe.unet, rank=args.rank, seed=i) for i in range(adapters)}
    size_mb = len(objects["loras/0.safetensors"]) / 2**20
    spec = RenderSpec(prompt="nova, a penguin", negative_prompt="", width=args.side, height=args.side,
                      steps=args.steps, guidance=5.0, seed=7)

    def lora(i: int) -> RenderSpec:
        return replace(spec, lora=LoraChoice(name=f"soul{i}", version=f"{i:016x}", scale=1.0,
                                             object=f"loras/{i}.safetensors"))

    def timed(host: AdapterHost, specs: list[RenderSpec]) -> list[float]:
        times = []
        for item in specs:
            if device.is_cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            render_images(pipe, [item], prepare=lambda p, s=item: host.prepare(p, s, objects.__getitem__).kwargs)
            if device.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        return times

    def host(**kwargs) -> AdapterHost:
        options = dict(cache_dir=cache, ip_adapter_model=None, ip_adapter_weight_name="ip-adapter.safetensors",
                       tiny_ip_adapter=True, resident=1, budget_bytes=1 << 40, hotswap=False,
                       hotswap_rank=args.rank)
        return AdapterHost(**{**options, **kwargs})

    def clear() -> None:
        for name in list(getattr(pipe.unet, "peft_config", {})):
            pipe.delete_adapters(name)

    warm = host(resident=adapters)
    timed(warm, [spec, lora(0)])  # warm-up: first call's allocations and kernels
    results = {}
    clear()
    resident_host = host(resident=adapters)
    timed(resident_host, [lora(0)])
    results["resident"] = (timed(resident_host, [lora(0)] * args.renders), resident_host.stats.loads)
    clear()
    results["base"] = (timed(host(), [spec] * args.renders), 0)
    switching = host(resident=1)
    results["switch"] = (timed(switching, [lora(i + 1) for i in range(args.renders)]), switching.stats.loads)
    # Hot swap on a fresh copy of the adapters' state: enable_lora_hotswap must precede the slot's first load.
    clear()
    swapping = host(hotswap=True)
    timed(swapping, [lora(0)])
    results["hotswap"] = (timed(swapping, [lora(i + 1) for i in range(args.renders)]), swapping.stats.loads - 1)

    resident_median = statistics.median(results["resident"][0])
    print(f"device {device.name}, {'SDXL architecture, random weights' if args.sdxl_random else 'tiny SDXL'}, "
          f"{args.side}px, {args.steps} steps, LoRA rank {args.rank} ({size_mb:.2f} MiB), {args.renders} renders each")
    print(f"{'mode':<10}{'median s':>10}{'vs resident':>13}{'loads':>7}")
    report = {"device": device.name, "sdxl_random": args.sdxl_random, "side": args.side, "steps": args.steps,
              "rank": args.rank, "lora_mib": round(size_mb, 3), "modes": {}}
    for mode in ("base", "resident", "switch", "hotswap"):
        times, loads = results[mode]
        median = statistics.median(times)
        print(f"{mode:<10}{median:>10.4f}{median / resident_median:>13.2f}{loads:>7}")
        report["modes"][mode] = {"median_s": round(median, 5), "vs_resident": round(median / resident_median, 3),
                                 "loads": loads}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
