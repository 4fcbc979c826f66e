"""Previews of the forming image while SDXL denoises: latents -> a small RGB image. Two decoders: TAESD-XL (diffusers'
`AutoencoderTiny`, from the local folder `SOUL_PREVIEW_MODEL`) when configured, else the linear latent->RGB
approximation that needs no weights (a 4x3 matrix fitted to SDXL's VAE, the factors ComfyUI and A1111 use for
SDXL latents). Either way the preview is at most `max_side` pixels on its longer side; the stage encodes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

# SDXL latent channel -> RGB (in [-1, 1]) and the bias, for latents as they are during denoising (unscaled).
SDXL_LATENT_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                   (-0.3165, -0.2492, -0.2188))
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


@dataclass(frozen=True)
class Previews:
    """What a render call needs to emit previews: every how many steps, the decoder (latents of a call -> one image
    per item), and where each goes (`emit(item index in the call's specs, step, steps, image)`)."""

    every: int
    decode: Callable[[torch.Tensor], list[Image.Image]]
    emit: Callable[[int, int, int, Image.Image], None]

    def due(self, step: int, steps: int) -> bool:
        # Not the last step: the finished image follows at once.
        return self.every > 0 and step % self.every == 0 and step < steps


def _to_images(rgb: torch.Tensor, max_side: int) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> PIL images no larger than `max_side`."""
    pixels = ((rgb.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    images = []
    for array in pixels:
        image = Image.fromarray(array, "RGB")
        scale = max_side / max(image.size)
        if scale < 1:
            image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                                 Image.Resampling.BILINEAR)
        images.append(image)
    return images


def linear_decoder(max_side: int = 256) -> Callable[[torch.Tensor], list[Image.Image]]:
    """Latents [B, 4, h, w] -> RGB at latent resolution (1/8 of the image), by the fixed linear map."""

    def decode(latents: torch.Tensor) -> list[Image.Image]:
        with torch.inference_mode():
            factors = torch.tensor(SDXL_LATENT_RGB, dtype=torch.float32, device=latents.device)
            bias = torch.tensor(SDXL_LATENT_RGB_BIAS, dtype=torch.float32, device=latents.device)
            rgb = torch.einsum("bchw,cr->brhw", latents.float(), factors) + bias.view(1, 3, 1, 1)
        return _to_images(rgb, max_side)

    return decode


def load_taesd(model: str, device: str, dtype: torch.dtype):
    """TAESD-XL from a local diffusers folder (e.g. madebyollin/taesdxl), never touching the network."""
    from diffusers import AutoencoderTiny

    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"SOUL_PREVIEW_MODEL must be a diffusers AutoencoderTiny folder, got {path}")
    return AutoencoderTiny.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()


def taesd_decoder(taesd, max_side: int = 256) -> Callable[[torch.Tensor], list[Image.Image]]:
    """Latents -> RGB at full resolution through TAESD (a few ms on a GPU), scaled down to `max_side`."""

    def decode(latents: torch.Tensor) -> list[Image.Image]:
        with torch.inference_mode():
            # AutoencoderTiny's scaling factor is 1: it decodes the denoising latents as they are.
            rgb = taesd.decode(latents.to(taesd.dtype) / taesd.config.scaling_factor).sample
        return _to_images(rgb, max_side)

    return decode
