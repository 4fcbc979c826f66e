"""The safety checker in the runner: loading (diffusers' `StableDiffusionSafetyChecker`, a CLIP vision tower with
concept embeddings, from a local folder given as `SOUL_SAFETY_MODEL`; or the tiny random one built offline, the
default) and scoring a batch of rendered images in one call.

A score is the checker's own measure: the largest margin over its concepts (cosine similarity of the image's CLIP
embedding to a concept, minus that concept's threshold, plus the "special care" adjustment), as in diffusers'
`forward_onnx`. An image is flagged when its score is above the runner's threshold (`SOUL_SAFETY_THRESHOLD`,
default 0: exactly diffusers' decision). The tiny checker's scores lie in [-2, 0] (its concept thresholds are 1), so
it flags nothing at the default and everything below -2: tests steer its verdict with the setting, not with code."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance
from PIL import Image
from transformers import CLIPConfig
from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # PIL backend: no torchvision needed

TINY_SAFETY_NAME = "tiny-safety-v1"  # bump when the architecture below changes: it names the cache folder
_TINY_SIDE = 32


@dataclass
class LoadedChecker:
    model: StableDiffusionSafetyChecker
    processor: CLIPImageProcessor
    name: str  # what verdicts and metrics name the checker by
    device: str
    dtype: torch.dtype

    def __post_init__(self) -> None:
        self.lock = threading.Lock()


def tiny_safety_checker(seed: int = 0) -> tuple[StableDiffusionSafetyChecker, CLIPImageProcessor]:
    """A deterministic random-weight checker with the real one's structure (CLIP vision tower, projection, 17
    concepts and 3 special-care concepts), small enough to score a batch on a CPU in milliseconds."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": _TINY_SIDE, "patch_size": 8},
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4},
        projection_dim=16,
    )
    model = StableDiffusionSafetyChecker(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random concepts (the constructor leaves them all ones); thresholds stay 1, as built
        model.concept_embeds.copy_(torch.randn(model.concept_embeds.shape, generator=generator))
        model.special_care_embeds.copy_(torch.randn(model.special_care_embeds.shape, generator=generator))
    processor = CLIPImageProcessor(size={"shortest_edge": _TINY_SIDE}, crop_size={"height": _TINY_SIDE,
                                                                                  "width": _TINY_SIDE})
    return model.eval(), processor


def ensure_tiny_safety(cache_dir: Path) -> Path:
    """The tiny checker's folder under `cache_dir`, built on first use and published in one rename."""
    folder = Path(cache_dir) / TINY_SAFETY_NAME
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model, processor = tiny_safety_checker()
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _checker_folder(path: Path) -> Path:
    """A checker folder (config.json + preprocessor_config.json, like CompVis/stable-diffusion-safety-checker), or a
    diffusers Stable Diffusion folder that ships one (`safety_checker/` + `feature_extractor/`)."""
    if (path / "config.json").is_file():
        return path
    if (path / "safety_checker" / "config.json").is_file():
        return path
    if path.exists():
        raise ValueError(f"SOUL_SAFETY_MODEL must be a safety checker folder (config.json, preprocessor_config.json)"
                         f" or a Stable Diffusion folder with safety_checker/, got {path}")
    raise FileNotFoundError(f"safety model not found: {path}")


def load_checker(model: str | None, cache_dir: Path, device: str, dtype: torch.dtype) -> LoadedChecker:
    """Load the checker onto `device`, never touching the network; `model` None = the tiny one."""
    if model is None:
        folder, name = ensure_tiny_safety(Path(cache_dir)), "tiny-safety"
        checker_dir = processor_dir = folder
    else:
        folder = _checker_folder(Path(model).expanduser())
        name = folder.name
        nested = (folder / "safety_checker" / "config.json").is_file() and not (folder / "config.json").is_file()
        checker_dir = folder / "safety_checker" if nested else folder
        processor_dir = folder / "feature_extractor" if nested else folder
    if model is None and not device.startswith("cuda"):
        torch.set_num_threads(1)  # as for the tiny SDXL (pipelines/sdxl.py): tiny ops crawl on a busy thread pool
    checker = StableDiffusionSafetyChecker.from_pretrained(checker_dir, local_files_only=True, dtype=dtype)
    processor = CLIPImageProcessor.from_pretrained(processor_dir, local_files_only=True)
    return LoadedChecker(model=checker.to(device).eval(), processor=processor, name=name, device=device, dtype=dtype)


def score_images(checker: LoadedChecker, images: list[Image.Image]) -> list[float]:
    """One score per image, all in one forward pass (a batch is scored like it was rendered: together)."""
    with checker.lock, torch.inference_mode():
        inputs = checker.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        pixels = inputs.pixel_values.to(checker.device, checker.dtype)
        model = checker.model
        embeds = model.visual_projection(model.vision_model(pixels)[1]).float()
        special = cosine_distance(embeds, model.special_care_embeds.float()) - model.special_care_embeds_weights.float()
        adjustment = (special > 0).any(dim=1).float() * 0.01
        concepts = cosine_distance(embeds, model.concept_embeds.float()) - model.concept_embeds_weights.float()
        scores = (concepts + adjustment.unsqueeze(1)).max(dim=1).values
    return [round(float(s), 4) for s in scores.cpu()]
