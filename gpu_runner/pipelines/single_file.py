"""Writing an SDXL pipeline back out as one original-layout `.safetensors` checkpoint (Stability's key layout),
the inverse of diffusers' single-file loader: how the tiny model proves the real single-file loading path."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file


# --- writing an original-layout single file -----------------------------------------------------------------------
# The inverse of diffusers' single-file loader (diffusers.loaders.single_file_utils) for SDXL: the key layout of
# Stability's `sd_xl_base_1.0.safetensors`, derived from the UNet's config rather than hard-coded for three levels,
# so the tiny model round-trips through the same loader as the real checkpoint.

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_CLIP_PREFIX = "conditioner.embedders.0.transformer."
_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_FLAT = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}

# (diffusers prefix, original prefix, renames of the part after the prefix)
_Prefixes = list[tuple[str, str, dict[str, str]]]


def export_single_file(pipe: StableDiffusionXLPipeline, path: Path) -> Path:
    """Write the pipeline's UNet, VAE and both text encoders to one `.safetensors` file in the original SDXL key
    layout, as `from_single_file` reads it. Tokenizers and scheduler are not weights and are not written."""
    state = original_state_dict(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    return path


def original_state_dict(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """The four models' weights under their names in Stability's original SDXL checkpoint."""
    state: dict[str, torch.Tensor] = {}
    state.update(_rename(unet.state_dict(), _unet_prefixes(unet.config), _UNET_PREFIX, "UNet"))
    state.update(_vae_to_ldm(vae))
    state.update(_clip_to_ldm(text_encoder))
    state.update(_open_clip_to_ldm(text_encoder_2))
    return state


def _rename(state: dict[str, torch.Tensor], prefixes: _Prefixes, ldm_prefix: str, what: str) -> dict:
    out = {}
    for key, tensor in state.items():
        for ours, theirs, inner in prefixes:
            if key.startswith(ours):
                out[ldm_prefix + theirs + _rename_head(key[len(ours) :], inner)] = tensor
                break
        else:
            raise ValueError(f"no original-layout name for {what} weight {key!r}")
    return out


def _rename_head(rest: str, table: dict[str, str]) -> str:
    """Rename the leading part of a dotted name by `table` ("norm1.weight" -> "in_layers.0.weight")."""
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _unet_prefixes(config) -> _Prefixes:
    # The original numbers the UNet's blocks flat: input_blocks.0 is conv_in, then per level `layers_per_block`
    # blocks of (resnet, attention) and one downsampler; output_blocks has `layers_per_block + 1` per level, the
    # last one carrying the upsampler after its resnet (and attention, on levels that have one).
    n = config.layers_per_block
    if not isinstance(n, int):
        raise ValueError("a UNet with per-level layers_per_block has no original SDXL layout")
    prefixes: _Prefixes = [
        ("time_embedding.linear_1.", "time_embed.0.", {}),
        ("time_embedding.linear_2.", "time_embed.2.", {}),
        ("add_embedding.linear_1.", "label_emb.0.0.", {}),
        ("add_embedding.linear_2.", "label_emb.0.2.", {}),
        ("conv_in.", "input_blocks.0.0.", {}),
        ("conv_norm_out.", "out.0.", {}),
        ("conv_out.", "out.2.", {}),
        ("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET),
        ("mid_block.attentions.0.", "middle_block.1.", {}),
        ("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET),
    ]
    for level in range(len(config.down_block_types)):
        for j in range(n):
            block = 1 + level * (n + 1) + j
            prefixes.append((f"down_blocks.{level}.resnets.{j}.", f"input_blocks.{block}.0.", _UNET_RESNET))
            prefixes.append((f"down_blocks.{level}.attentions.{j}.", f"input_blocks.{block}.1.", {}))
        last = 1 + level * (n + 1) + n
        prefixes.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{last}.0.op.", {}))
    for level, kind in enumerate(config.up_block_types):
        for j in range(n + 1):
            block = level * (n + 1) + j
            prefixes.append((f"up_blocks.{level}.resnets.{j}.", f"output_blocks.{block}.0.", _UNET_RESNET))
            prefixes.append((f"up_blocks.{level}.attentions.{j}.", f"output_blocks.{block}.1.", {}))
        slot = 2 if "CrossAttn" in kind else 1
        prefixes.append((f"up_blocks.{level}.upsamplers.0.", f"output_blocks.{level * (n + 1) + n}.{slot}.", {}))
    return prefixes


def _vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    levels, n = len(vae.config.block_out_channels), vae.config.layers_per_block
    prefixes: _Prefixes = [
        (f"{name}.", f"{name}.", {})  # same names in both layouts
        for name in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv",
                     "post_quant_conv")
    ]
    for part in ("encoder", "decoder"):
        prefixes += [
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", {}),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _VAE_RESNET),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _VAE_RESNET),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION),
        ]
    for level in range(levels):
        prefixes += [(f"encoder.down_blocks.{level}.resnets.{j}.", f"encoder.down.{level}.block.{j}.", _VAE_RESNET)
                     for j in range(n)]
        prefixes.append((f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample.", {}))
        # The decoder's levels run the other way round in the original: up.0 is the last, full-resolution one.
        original = levels - 1 - level
        prefixes += [(f"decoder.up_blocks.{level}.resnets.{j}.", f"decoder.up.{original}.block.{j}.", _VAE_RESNET)
                     for j in range(n + 1)]
        prefixes.append((f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{original}.upsample.", {}))
    out = _rename(vae.state_dict(), prefixes, _VAE_PREFIX, "VAE")
    for key, tensor in out.items():
        if ".mid.attn_1." in key and key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            out[key] = tensor[:, :, None, None]  # the original's attention projections are 1x1 convolutions
    return out


def _clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    # The original keeps Hugging Face's CLIPTextModel names under `transformer.text_model.` (transformers >= 5.6
    # dropped the `text_model.` level from its own names).
    out = {}
    for key, tensor in text_encoder.state_dict().items():
        name = key if key.startswith("text_model.") else "text_model." + key
        out[_CLIP_PREFIX + name] = tensor
    return out


def _open_clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    state = text_encoder.state_dict()
    out = {_OPEN_CLIP_PREFIX + "text_projection": state["text_projection.weight"].T}  # OpenCLIP computes x @ P
    layer_key = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)")
    for key, tensor in state.items():
        if key == "text_projection.weight":
            continue
        if key in _OPEN_CLIP_FLAT:
            out[_OPEN_CLIP_PREFIX + _OPEN_CLIP_FLAT[key]] = tensor
            continue
        match = layer_key.fullmatch(key)
        if match is None:
            raise ValueError(f"no original-layout name for text encoder 2 weight {key!r}")
        layer, rest = match.groups()
        prefix = f"{_OPEN_CLIP_PREFIX}transformer.resblocks.{layer}."
        if rest.startswith("self_attn.q_proj."):
            # OpenCLIP's attention holds q, k and v as one stacked projection.
            kind = rest.rsplit(".", 1)[1]
            parts = [state[f"text_model.encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{prefix}attn.in_proj_{kind}"] = torch.cat(parts)
        elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            continue  # stacked with q above
        else:
            out[prefix + _rename_head(rest, _OPEN_CLIP_LAYER)] = tensor
    return out
