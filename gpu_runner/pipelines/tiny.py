"""Tiny random-weight stand-ins for the runner's pipelines, built offline and cached on disk.

They run the real diffusers code path on a CPU in a fraction of a second (their pixels are noise), so tests, CI and
`make run` need neither a GPU nor downloaded weights. This module owns the tiny SDXL and the tiny SVD; each builder is
deterministic (same seed, same weights, byte for byte) and publishes its folder atomically, so concurrent runners
sharing a cache never see a half-written model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from gpu_runner.pipelines.clip import CLIP_BOS, CLIP_EOS, clip_vocab, publish_folder

TINY_SDXL_NAME = "tiny-sdxl-v1"  # bump when an architecture below changes: it names the cache folder
TINY_SVD_NAME = "tiny-svd-v2"
SVD_CONFIGS = Path(__file__).resolve().parent / "configs" / "svd"

# The two text encoders MUST differ in width: diffusers' single-file loader tells SDXL's CLIP-L from its OpenCLIP
# encoder by the width of the position embedding, and with equal widths it silently loads the first encoder's
# weights into the second. The UNet's cross-attention width is their concatenation, as in SDXL (768 + 1280).
_TEXT_WIDTH = 32
_TEXT_2_WIDTH = 48
_TEXT_2_PROJECTION = 32  # the pooled embedding of encoder 2 that feeds the UNet's added conditioning
_TIME_EMBED_DIM = 8  # SDXL embeds 6 size/crop numbers with this width each
_MAX_TOKENS = 77  # CLIP's context, as in the real model, so prompts truncate the same way


def byte_level_clip_tokenizer(pad_token: str) -> CLIPTokenizer:
    """A CLIP tokenizer with the real vocabulary layout and no merges: every byte is a token. SDXL's first
    tokenizer pads with <|endoftext|>, its second with "!"."""
    vocab = clip_vocab([])
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=_MAX_TOKENS)


def _text_config(width: int, heads: int, hidden_act: str, projection_dim: int) -> CLIPTextConfig:
    vocab = clip_vocab([])
    return CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=heads, max_position_embeddings=_MAX_TOKENS, hidden_act=hidden_act,
        projection_dim=projection_dim, bos_token_id=vocab[CLIP_BOS], eos_token_id=vocab[CLIP_EOS], pad_token_id=1,
    )


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """The tiny SDXL in memory, laid out like SDXL base 1.0 at a fraction of its widths (after diffusers' own
    `get_dummy_components()`): UNet of two levels with text_time conditioning, four-level VAE, both text encoders."""
    torch.manual_seed(seed)  # every component below draws its random init from this one stream, in this order
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=_TEXT_WIDTH + _TEXT_2_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _TEXT_2_PROJECTION,
        norm_num_groups=16,
    )
    # Four levels, like SDXL's VAE: latents are 1/8 of the image. (With diffusers' two-level dummy VAE a 256 px
    # image has 128x128 latents, and the VAE's mid-block attention over 16k positions took 9 s per render.)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    text_encoder = CLIPTextModel(_text_config(_TEXT_WIDTH, 4, "quick_gelu", _TEXT_WIDTH))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(_TEXT_2_WIDTH, 4, "gelu", _TEXT_2_PROJECTION))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", interpolation_type="linear", prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
        tokenizer=byte_level_clip_tokenizer("<|endoftext|>"), tokenizer_2=byte_level_clip_tokenizer("!"),
        unet=unet.eval(), scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def save_pipeline(pipe, dest: Path) -> Path:
    """Write a pipeline as a diffusers folder at `dest`, all at once (a model already there stands)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        # Another builder may win the race to `dest`: its folder stands (same seed, same bytes) and ours goes.
        publish_folder(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def build_tiny_sdxl(dest: Path, seed: int = 0) -> Path:
    """Write the tiny SDXL as a diffusers folder at `dest` and return it."""
    return save_pipeline(tiny_sdxl_pipeline(seed), dest)


def ensure_tiny_sdxl(cache_dir: Path) -> Path:
    """The tiny SDXL's folder under `cache_dir`, built on first use."""
    folder = Path(cache_dir) / TINY_SDXL_NAME
    if (folder / "model_index.json").is_file():
        return folder
    return build_tiny_sdxl(folder)


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
    scheduler = EulerDiscreteScheduler.from_pretrained(SVD_CONFIGS / "scheduler")
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
