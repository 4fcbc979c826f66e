"""Validation of a soul's uploads, before anything is stored: reference images (decoded by Pillow from an
allow-list of formats, bounded in bytes and pixels before a pixel is decoded, re-encoded as a plain PNG) and LoRA
adapters (a safetensors file parsed by hand, no torch: header bounded, every tensor's dtype, shape and byte range
checked, every key a `lora_A`/`lora_B` pair of a linear layer that exists in the served model with matching
features, rank capped). A refusal is an `InvalidInput`/`PayloadTooLarge` naming the reason in words of its own
(never a library's text); nothing is fixed up.

A decoded reference takes up to ~200 MB while it is re-encoded (a 4096x4096 RGBA frame, its RGB copy, the
resampling), however small its file: at most `MAX_CONCURRENT_DECODES` decode at once per process, the others wait
up to `DECODE_WAIT_S` and are then answered 503 with Retry-After.

The model's linear layers come from `data/lora_targets/{model_tag}.json`, written from the architecture itself by
`gpu_runner/pipelines/lora_targets.py`."""

from __future__ import annotations

import io
import json
import math
import threading
import warnings
from dataclasses import dataclass
from functools import cache
from importlib import resources

from functions.core.errors import InvalidInput, PayloadTooLarge, Unavailable

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4}
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
MAX_CONCURRENT_DECODES = 2
DECODE_WAIT_S = 10.0
_DECODES = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)


@dataclass(frozen=True)
class UploadLimits:
    reference_max_bytes: int = 10 * 1024 * 1024
    reference_max_pixels: int = 4096 * 4096
    reference_max_side: int = 1024  # stored size: the IP-Adapter's encoder sees 224 px anyway
    # A reference must show a face or figure: its shorter side at least this (the encoder crops a centred square
    # of the shorter side, so a sliver carries nothing and a 1024x1 strip would be scaled to 229376x224 first)
    reference_min_side: int = 64
    reference_max_aspect: float = 4.0
    lora_max_bytes: int = 23 * 1024 * 1024
    lora_max_header_bytes: int = 2 * 1024 * 1024
    lora_max_tensors: int = 4096
    lora_max_rank: int = 128


@dataclass(frozen=True)
class ReferenceFacts:
    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class LoraFacts:
    rank: int
    tensors: int
    components: tuple[str, ...]


# ---- reference images ---------------------------------------------------------------------------------------------


def reencode_reference(data: bytes, limits: UploadLimits) -> ReferenceFacts:
    """Decode `data` as one still PNG, JPEG or WebP image within the limits and return it re-encoded (RGB PNG, no
    metadata, at most `reference_max_side` on its longer side)."""
    if not data:
        raise InvalidInput("the image is empty", field="image")
    if len(data) > limits.reference_max_bytes:
        raise PayloadTooLarge(f"the image is {len(data)} bytes; at most {limits.reference_max_bytes}", field="image")
    if not _DECODES.acquire(timeout=DECODE_WAIT_S):
        raise Unavailable("other reference images are being decoded; retry shortly", field="image",
                          headers={"Retry-After": "2"})
    try:
        return _reencode(data, limits)
    finally:
        _DECODES.release()


def _reencode(data: bytes, limits: UploadLimits) -> ReferenceFacts:
    from PIL import Image, UnidentifiedImageError  # deferred: only admin uploads need Pillow

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise InvalidInput("not a usable image: send a PNG, JPEG or WebP", field="image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidInput(f"the image declares more than {limits.reference_max_pixels} pixels",
                               field="image") from None
        # The header's size is known before any pixel is decoded: a decompression bomb stops here.
        width, height = image.size
        if width * height > limits.reference_max_pixels:
            raise InvalidInput(f"the image is {width}x{height} = {width * height} pixels; at most "
                               f"{limits.reference_max_pixels}", field="image")
        if getattr(image, "n_frames", 1) > 1:
            raise InvalidInput("animated images are not references: send one still image", field="image")
        if min(width, height) < limits.reference_min_side:
            raise InvalidInput(f"the image is {width}x{height}; a reference needs at least "
                               f"{limits.reference_min_side} pixels on its shorter side", field="image")
        if max(width, height) > limits.reference_max_aspect * min(width, height):
            raise InvalidInput(f"the image is {width}x{height}; a reference may be at most "
                               f"{limits.reference_max_aspect:g} times as long as it is wide", field="image")
        if image.format == "JPEG":  # decoded at 1/2, 1/4 or 1/8 scale when that still covers the stored size
            image.draft("RGB", (limits.reference_max_side, limits.reference_max_side))
        try:
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidInput("the image does not decode: it is truncated or corrupt", field="image") from None
    rgb = _as_rgb(image)
    if max(rgb.size) > limits.reference_max_side:
        rgb.thumbnail((limits.reference_max_side, limits.reference_max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="PNG", optimize=False)
    return ReferenceFacts(png=out.getvalue(), width=rgb.width, height=rgb.height)


def _as_rgb(image):
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


# ---- LoRA adapters ------------------------------------------------------------------------------------------------


@cache
def lora_targets(model_tag: str) -> dict[str, dict[str, tuple[int, int]]] | None:
    """The served model's linear layers per component, or None when no table ships for it."""
    path = resources.files("functions").joinpath(f"data/lora_targets/{model_tag}.json")
    if not path.is_file():
        return None
    raw = json.loads(path.read_text("utf-8"))
    return {component: {name: (shape[0], shape[1]) for name, shape in raw[component].items()}
            for component in COMPONENTS}


def validate_lora(data: bytes, targets: dict[str, dict[str, tuple[int, int]]] | None,
                  limits: UploadLimits) -> LoraFacts:
    """Check that `data` is a safetensors LoRA (diffusers/peft keys) that fits the model `targets` describes."""
    if targets is None:
        raise InvalidInput("this deployment's model has no LoRA target table: adapters cannot be checked, so they "
                           "are not accepted", field="lora")
    if len(data) > limits.lora_max_bytes:
        raise PayloadTooLarge(f"the LoRA is {len(data)} bytes; at most {limits.lora_max_bytes}", field="lora")
    header = _safetensors_header(data, limits)
    modules: dict[tuple[str, str], dict[str, list[int]]] = {}
    for key, entry in header.items():
        component, _, rest = key.partition(".")
        suffix = next((s for s in _LORA_SUFFIXES if rest.endswith(s)), None)
        if component not in COMPONENTS or suffix is None:
            raise InvalidInput(f"tensor {key!r} is not a LoRA weight: expected '<unet|text_encoder|text_encoder_2>."
                               "<layer>.lora_A.weight' or '.lora_B.weight' (diffusers/peft layout)", field="lora")
        module = rest[: -len(suffix)]
        if module not in targets[component]:
            raise InvalidInput(f"tensor {key!r} names no linear layer {module!r} in the {component} of this "
                               "deployment's model", field="lora")
        modules.setdefault((component, module), {})[suffix] = entry["shape"]
    rank = 0
    for (component, module), pair in modules.items():
        if len(pair) != 2:
            missing = next(s for s in _LORA_SUFFIXES if s not in pair)
            raise InvalidInput(f"{component}.{module} has no {missing.lstrip('.')}: a LoRA layer needs both A and B",
                               field="lora")
        a, b = pair[".lora_A.weight"], pair[".lora_B.weight"]
        features_in, features_out = targets[component][module]
        if len(a) != 2 or len(b) != 2 or a[1] != features_in or b[0] != features_out or a[0] != b[1]:
            raise InvalidInput(
                f"{component}.{module}: lora_A {a} and lora_B {b} do not fit a linear layer of {features_in} -> "
                f"{features_out} features (expected lora_A [r, {features_in}] and lora_B [{features_out}, r])",
                field="lora",
            )
        if not 1 <= a[0] <= limits.lora_max_rank:
            raise InvalidInput(f"{component}.{module} has rank {a[0]}; at most {limits.lora_max_rank}", field="lora")
        rank = max(rank, a[0])
    if not modules:
        raise InvalidInput("the file holds no tensors", field="lora")
    _all_finite(data, header)
    components = tuple(sorted({component for component, _ in modules}))
    return LoraFacts(rank=rank, tensors=len(header), components=components)


# Each dtype's word and exponent bits: all of them set is an infinity or a NaN.
_NON_FINITE = {"F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000)}


def _all_finite(data: bytes, header: dict[str, dict]) -> None:
    """Every weight a number: one NaN or infinity in a LoRA makes every render of its soul a black image.
    (numpy only here: the api imports it on the first LoRA upload, not at its cold start.)"""
    import numpy as np

    body = 8 + int.from_bytes(data[:8], "little")
    for key, entry in header.items():
        begin, end = entry["data_offsets"]
        kind, exponent = _NON_FINITE[entry["dtype"]]
        word = np.dtype(kind).newbyteorder("<")
        bits = np.frombuffer(data, dtype=word, count=(end - begin) // word.itemsize, offset=body + begin)
        bad = int(np.count_nonzero((bits & exponent) == exponent))
        if bad:
            raise InvalidInput(f"tensor {key!r} holds {bad} NaN or infinite values: every render with it would be "
                               "black", field="lora")


def _safetensors_header(data: bytes, limits: UploadLimits) -> dict[str, dict]:
    """The tensor entries of a safetensors file, each checked: dtype allowed, byte range exactly its shape's size,
    ranges in order, without gaps or overlaps, covering the data section to its end."""
    if len(data) < 8:
        raise InvalidInput("not a safetensors file: shorter than its 8-byte header length", field="lora")
    size = int.from_bytes(data[:8], "little")
    if size > limits.lora_max_header_bytes:
        raise InvalidInput(f"the safetensors header declares {size} bytes; at most {limits.lora_max_header_bytes}",
                           field="lora")
    if size < 2 or 8 + size > len(data):
        raise InvalidInput(f"the safetensors header declares {size} bytes but the file has {len(data) - 8} after "
                           "its length", field="lora")
    try:
        header = json.loads(data[8:8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the safetensors header is not JSON", field="lora") from None
    if not isinstance(header, dict):
        raise InvalidInput("the safetensors header is not a JSON object", field="lora")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidInput("the safetensors __metadata__ must map names to strings", field="lora")
    if len(header) > limits.lora_max_tensors:
        raise InvalidInput(f"the file holds {len(header)} tensors; at most {limits.lora_max_tensors}", field="lora")
    body = len(data) - 8 - size
    spans = []
    for key, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise InvalidInput(f"tensor {key!r}: an entry needs exactly dtype, shape and data_offsets", field="lora")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise InvalidInput(f"tensor {key!r} has dtype {dtype!r}; one of {', '.join(_DTYPE_BYTES)}", field="lora")
        if not (isinstance(shape, list) and all(isinstance(d, int) and 0 < d < 2**31 for d in shape)):
            raise InvalidInput(f"tensor {key!r}: shape must be a list of positive integers", field="lora")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise InvalidInput(f"tensor {key!r}: data_offsets must be [begin, end]", field="lora")
        begin, end = offsets
        if not 0 <= begin <= end <= body or end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise InvalidInput(f"tensor {key!r}: bytes [{begin}, {end}) do not hold a {dtype} tensor of shape "
                               f"{shape} inside the {body}-byte data section", field="lora")
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise InvalidInput("the tensors' byte ranges overlap or leave gaps", field="lora")
        position = end
    if position != body:
        raise InvalidInput(f"the data section has {body - position} bytes no tensor describes", field="lora")
    return header
