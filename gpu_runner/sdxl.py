"""Stable Diffusion XL in the runner: loading (the offline tiny stand-in, a diffusers folder, or one original
`.safetensors` checkpoint described by the SDXL base 1.0 configs shipped in `configs/sdxl/`), rendering one image
from a `RenderSpec` with per-step progress, and writing a pipeline back out as an original-layout single file.

The single-file path needs the CLIP tokenizer's vocabulary, which SDXL checkpoints do not carry and which cannot be
downloaded here: it is rebuilt from OpenAI's BPE merges file as packaged by open_clip_torch (or OpenAI's `clip`)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import save_file

from gpu_runner.device import DeviceChoice
from gpu_runner.prompts import encode_prompts, window_count

SHIPPED_CONFIGS = Path(__file__).parent / "configs" / "sdxl"
_CONFIG_CACHE_NAME = "sdxl-base-1.0-configs-v1"  # the shipped configs plus generated tokenizer files

MIN_SIDE, MAX_SIDE = 64, 4096
MAX_STEPS = 1000  # the scheduler's training timesteps: more steps than that cannot be scheduled


# --- rendering ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderSpec:
    """One image to render. Checked on construction, so an invalid spec cannot reach the pipeline."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if not isinstance(self.negative_prompt, str):
            raise ValueError("negative_prompt must be a string (empty for none)")
        for side in ("width", "height"):
            value = getattr(self, side)
            if not isinstance(value, int) or value % 8 or not MIN_SIDE <= value <= MAX_SIDE:
                raise ValueError(f"{side} must be a multiple of 8 in [{MIN_SIDE}, {MAX_SIDE}], got {value!r}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}], got {self.steps!r}")
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")


def render_image(
    pipe: StableDiffusionXLPipeline, spec: RenderSpec, on_step: Callable[[int, int], None] | None = None
) -> Image.Image:
    """Render `spec`. `on_step(done, total)` runs after each denoising step; whatever it raises (a cancel, a lost
    lease) stops the render and propagates. The same spec gives the same image on the same device and weights."""
    return render_images(pipe, [spec], on_step)[0]


def batch_key(spec: RenderSpec) -> tuple:
    """Specs with equal keys can share one pipeline call: same size, steps and guidance, and the same kind of
    negative conditioning (zeros for none, encoded text otherwise)."""
    return (spec.width, spec.height, spec.steps, float(spec.guidance), bool(spec.negative_prompt))


def prompt_arguments(pipe: StableDiffusionXLPipeline, specs: list[RenderSpec]) -> dict:
    """THE place where text becomes the pipeline's prompt arguments: embeddings of 77-token windows
    (`gpu_runner/prompts.py`), so a long cue never pushes the soul's style suffix out of CLIP's window. An empty
    negative prompt gives zero embeddings, as SDXL base was trained for "no negative prompt"."""
    return encode_prompts(pipe, [spec.prompt for spec in specs], [spec.negative_prompt for spec in specs])


def render_images(
    pipe: StableDiffusionXLPipeline, specs: list[RenderSpec], on_step: Callable[[int, int], None] | None = None
) -> list[Image.Image]:
    """Render several specs with as few pipeline calls as keep each image independent of its partners (they must
    share `batch_key`). Each item has its own seeded generator, so item i is the image its spec renders alone.
    Items whose prompts need a different number of 77-token windows go in separate calls: padding a shorter
    prompt with empty windows would change its conditioning."""
    assert specs and len({batch_key(spec) for spec in specs}) == 1, "a batch needs one size, steps and guidance"
    images: dict[int, Image.Image] = {}
    # One render at a time per pipeline: a render mutates what it shares with any other (the scheduler's
    # timesteps, the pipeline's per-call fields, the tokenizers' padding mode, and an fp16 VAE upcast to fp32 for
    # decoding). One GPU gains nothing from interleaving two renders anyway.
    with _render_lock(pipe), torch.inference_mode():
        groups: dict[int, list[int]] = {}
        for index, spec in enumerate(specs):
            groups.setdefault(window_count(pipe, spec.prompt, spec.negative_prompt), []).append(index)
        for indexes in groups.values():
            group = [specs[i] for i in indexes]
            for i, image in zip(indexes, _render_call(pipe, group, on_step), strict=True):
                images[i] = image
    return [images[i] for i in range(len(specs))]


def _render_call(
    pipe: StableDiffusionXLPipeline, specs: list[RenderSpec], on_step: Callable[[int, int], None] | None
) -> list[Image.Image]:
    first = specs[0]
    device = pipe.device if pipe.device.type == "cuda" else "cpu"
    generators = [torch.Generator(device=device).manual_seed(spec.seed) for spec in specs]

    def step_end(pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        if on_step is not None:
            on_step(step_index + 1, pipeline.num_timesteps)
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
        from gpu_runner.tiny_models import ensure_tiny_sdxl  # deferred: it builds on this module's CLIP vocab

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


# --- the configs and tokenizer for original single-file checkpoints ----------------------------------------------

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
_CLIP_MERGES = 49152 - 256 - 2  # OpenAI CLIP keeps this many merges: a vocabulary of 49408 with the specials
_CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_CLIP_BPE_PACKAGES = ("open_clip", "clip")  # PyPI: open_clip_torch, clip-anytorch (OpenAI's clip, repackaged)


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte-to-character table for byte-level BPE, in its order: printable bytes map to themselves, the
    other bytes to unused code points from 256 on, so every byte is a visible character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary in OpenAI's order: the 256 byte characters, the same with the end-of-word mark,
    one token per merge, then the two special tokens."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(pair) for pair in merges] + [CLIP_BOS, CLIP_EOS]
    return {token: index for index, token in enumerate(tokens)}


def find_clip_bpe() -> Path | None:
    """OpenAI's BPE merges file: the copy shipped with the runner (configs/clip_bpe/, from open_clip_torch), else
    one inside an installed package, found without importing the package."""
    shipped = Path(__file__).resolve().parent / "configs" / "clip_bpe" / _CLIP_BPE_FILE
    if shipped.is_file():
        return shipped
    for package in _CLIP_BPE_PACKAGES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / _CLIP_BPE_FILE
            if candidate.is_file():
                return candidate
    return None


def build_clip_tokenizer_files(dest: Path, bpe_path: Path | None = None) -> None:
    """Write the `vocab.json` and `merges.txt` of CLIP's tokenizer into `dest` from OpenAI's gzip'd merges file,
    the way OpenAI's `SimpleTokenizer` builds its vocabulary (and the same files Hugging Face publishes)."""
    bpe_path = bpe_path or find_clip_bpe()
    if bpe_path is None:
        raise FileNotFoundError(
            f"CLIP's BPE vocabulary ({_CLIP_BPE_FILE}) is needed to load a single-file SDXL checkpoint; "
            "install open_clip_torch (it ships the file), or load a diffusers folder instead"
        )
    lines = gzip.decompress(Path(bpe_path).read_bytes()).decode("utf-8").split("\n")
    # Line 0 is a version header; OpenAI keeps the first _CLIP_MERGES merges after it.
    merges = [tuple(line.split()) for line in lines[1 : _CLIP_MERGES + 1] if line.strip()]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(clip_vocab(merges), ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (dest / "merges.txt").write_text(merges_text, encoding="utf-8")


def sdxl_config_folder(cache_dir: Path, bpe_path: Path | None = None) -> Path:
    """A complete diffusers config folder for SDXL base 1.0 (no weights) under `cache_dir`: the shipped configs
    plus the tokenizer files rebuilt from CLIP's BPE merges (`bpe_path`, default: the installed package's).
    Built once, published atomically."""
    folder = Path(cache_dir) / _CONFIG_CACHE_NAME
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        shutil.copytree(SHIPPED_CONFIGS, staging, dirs_exist_ok=True)
        for tokenizer in ("tokenizer", "tokenizer_2"):
            build_clip_tokenizer_files(staging / tokenizer, bpe_path)
        publish_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def publish_folder(staging: Path, dest: Path) -> None:
    """Move a completely written folder into place in one step (rename is atomic on one filesystem), so readers
    see no folder or a whole one. Losing the race to another builder of the same folder is fine."""
    try:
        os.rename(staging, dest)
    except OSError:
        if not (dest / "model_index.json").is_file():
            raise


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
