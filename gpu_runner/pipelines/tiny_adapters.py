"""Tiny random-weight adapters for the tiny SDXL (`tiny.py`), built offline: an IP-Adapter (image projection plus
`to_k_ip`/`to_v_ip` of every cross-attention layer, in the layout `load_ip_adapter` reads) with a tiny CLIP image
encoder, and LoRA files made with peft on the tiny UNet (for tests and `bench/adapters.py`). Deterministic: the
same seed gives the same bytes. The real IP-Adapter comes from `SOUL_IP_ADAPTER_MODEL`, a local folder."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save, save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from gpu_runner.pipelines.clip import publish_folder

TINY_IP_ADAPTER_NAME = "tiny-ip-adapter-v1"  # bump when the layout below changes: it names the cache folder
IP_ADAPTER_WEIGHTS = "ip-adapter.safetensors"
_IMAGE_EMBED_DIM = 32
_IMAGE_TOKENS = 4  # diffusers' ImageProjection for a plain IP-Adapter


def _cross_attention_widths(unet) -> list[int]:
    """Hidden width of each cross-attention processor, in `attn_processors` order (how diffusers numbers them)."""
    widths = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        channels = unet.config.block_out_channels
        if name.startswith("mid_block"):
            widths.append(channels[-1])
        elif name.startswith("up_blocks"):
            widths.append(list(reversed(channels))[int(name[len("up_blocks.")])])
        else:
            widths.append(channels[int(name[len("down_blocks.")])])
    return widths


def build_tiny_ip_adapter(dest: Path, unet, seed: int = 0) -> Path:
    """Write `ip-adapter.safetensors` and `image_encoder/` for `unet` at `dest`, all at once."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim
    weights = {
        "image_proj.proj.weight": torch.randn(_IMAGE_TOKENS * width, _IMAGE_EMBED_DIM, generator=generator) * 0.5,
        "image_proj.proj.bias": torch.zeros(_IMAGE_TOKENS * width),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    for index, hidden in enumerate(_cross_attention_widths(unet)):
        key = 2 * index + 1  # diffusers counts every attention processor, self-attention ones included
        weights[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, width, generator=generator) * 0.5
        weights[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, width, generator=generator) * 0.5
    torch.manual_seed(seed + 1)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=_IMAGE_EMBED_DIM, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, intermediate_size=37, patch_size=8,
    ))
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        save_file(weights, staging / IP_ADAPTER_WEIGHTS)
        encoder.eval().save_pretrained(staging / "image_encoder", safe_serialization=True)
        publish_folder(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def ensure_tiny_ip_adapter(cache_dir: Path, unet) -> Path:
    folder = Path(cache_dir) / TINY_IP_ADAPTER_NAME
    if (folder / IP_ADAPTER_WEIGHTS).is_file():
        return folder
    return build_tiny_ip_adapter(folder, unet)


def lora_state_dict(unet, rank: int = 4, seed: int = 0, targets=("to_q", "to_k", "to_v", "to_out.0"),
                    scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A random LoRA for `unet` in the diffusers/peft layout (`unet.<layer>.lora_A.weight`, `.lora_B.weight`),
    made with peft itself; `unet` is left as it was."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    name = f"_tiny_lora_{seed}"
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False),
                     adapter_name=name)
    try:
        state = get_peft_model_state_dict(unet, adapter_name=name)
    finally:
        unet.delete_adapters(name)
    return {f"unet.{key}": (value * scale).contiguous().clone() for key, value in state.items()}


def lora_bytes(unet, rank: int = 4, seed: int = 0, **kwargs) -> bytes:
    """The same LoRA as `.safetensors` bytes, as an admin would upload it."""
    return save(lora_state_dict(unet, rank=rank, seed=seed, **kwargs))
