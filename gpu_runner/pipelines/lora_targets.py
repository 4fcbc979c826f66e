"""The LoRA target table of a model: every linear layer of its UNet and text encoders with (in, out) features,
which is what a diffusers/peft LoRA's `lora_A` (rank x in) and `lora_B` (out x rank) must match. The functions
validate uploads against this table without torch (`functions/data/lora_targets/{model_tag}.json`); this module
writes it from the model itself, built on the meta device (no weights), so the table cannot drift from the
architecture (`tests/unit/test_identity_runner.py` rebuilds the tiny one and compares).

    python -m gpu_runner.pipelines.lora_targets tiny-sdxl-v1 functions/data/lora_targets/tiny-sdxl-v1.json
    python -m gpu_runner.pipelines.lora_targets sdxl-base-1.0 functions/data/lora_targets/sdxl-base-1.0.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def linear_table(module: torch.nn.Module) -> dict[str, list[int]]:
    return {name: [layer.in_features, layer.out_features] for name, layer in module.named_modules()
            if isinstance(layer, torch.nn.Linear)}


def pipeline_table(pipe) -> dict[str, dict[str, list[int]]]:
    return {component: linear_table(getattr(pipe, component)) for component in COMPONENTS}


def _sdxl_base_table() -> dict:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = Path(__file__).parent / "configs" / "sdxl"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        text = CLIPTextModel(CLIPTextConfig.from_json_file(configs / "text_encoder" / "config.json"))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_json_file(configs / "text_encoder_2" / "config.json"))
    return {"unet": linear_table(unet), "text_encoder": linear_table(text), "text_encoder_2": linear_table(text_2)}


def table_for(model_tag: str) -> dict:
    if model_tag.startswith("tiny-sdxl"):
        from gpu_runner.pipelines.tiny import tiny_sdxl_pipeline

        return pipeline_table(tiny_sdxl_pipeline())
    if model_tag == "sdxl-base-1.0":
        return _sdxl_base_table()
    raise SystemExit(f"no architecture known for model tag {model_tag!r}")


def main(argv: list[str]) -> None:
    model_tag, dest = argv
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Path(dest).write_text(json.dumps(table_for(model_tag), sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
