"""Issue 20's upload checks (functions/core/uploads.py), pure: reference images are decoded from an allow-list,
bounded in bytes and pixels before decoding (bombs refused), re-encoded as a plain RGB PNG; safetensors LoRAs are
parsed by hand with every bound checked and every tensor fitted to the served model's linear layers."""

from __future__ import annotations

import io
import json
import struct
import time

import pytest
from PIL import Image

from functions.core.errors import InvalidInput, PayloadTooLarge
from functions.core.uploads import UploadLimits, lora_targets, reencode_reference, validate_lora

LIMITS = UploadLimits()
TARGETS = {"unet": {"mid.to_q": (64, 64), "mid.ff": (64, 256)}, "text_encoder": {"q_proj": (32, 32)},
           "text_encoder_2": {}}


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def safetensors(tensors: dict[str, tuple[str, list[int]]], *, header_extra: dict | None = None,
                declared: int | None = None, trailing: bytes = b"") -> bytes:
    sizes = {"F16": 2, "BF16": 2, "F32": 4}
    header, offset = {}, 0
    for key, (dtype, shape) in tensors.items():
        n = sizes.get(dtype, 4)
        for d in shape:
            n *= d
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header.update(header_extra or {})
    raw = json.dumps(header).encode()
    return struct.pack("<Q", declared if declared is not None else len(raw)) + raw + bytes(offset) + trailing


def lora(rank=4, a_in=64, b_out=64, module="unet.mid.to_q", dtype="F16"):
    return {f"{module}.lora_A.weight": (dtype, [rank, a_in]), f"{module}.lora_B.weight": (dtype, [b_out, rank])}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_are_reencoded_as_plain_png(fmt):
    image = Image.new("RGB", (2000, 1000), (200, 30, 10))
    facts = reencode_reference(encoded(image, fmt), LIMITS)
    stored = Image.open(io.BytesIO(facts.png))
    assert stored.format == "PNG" and stored.mode == "RGB" and (facts.width, facts.height) == (1024, 512)
    assert stored.size == (1024, 512) and not stored.info.get("exif")


def test_transparency_is_flattened_on_white_and_metadata_dropped():
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("Comment", "secret")
    facts = reencode_reference(encoded(image, "PNG", pnginfo=meta), LIMITS)
    stored = Image.open(io.BytesIO(facts.png))
    assert stored.getpixel((0, 0)) == (255, 255, 255) and "Comment" not in stored.info


@pytest.mark.parametrize("data, error, reason", [
    (b"", InvalidInput, "empty"),
    (b"not an image at all", InvalidInput, "not a usable image"),
    (encoded(Image.new("RGB", (8, 8)), "GIF"), InvalidInput, "not a usable image"),  # not on the allow-list
    (encoded(Image.new("RGB", (8, 8)), "BMP"), InvalidInput, "not a usable image"),
    (encoded(Image.new("RGB", (64, 64)), "PNG")[:60], InvalidInput, "does not decode"),  # truncated
])
def test_what_is_not_a_still_allowed_image_is_refused(data, error, reason):
    with pytest.raises(error, match=reason):
        reencode_reference(data, LIMITS)


def test_a_decompression_bomb_is_refused_before_decoding():
    # 20000 x 20000 pixels of one colour: a ~600 KB PNG that decodes to 1.2 GB.
    bomb = encoded(Image.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 2_000_000
    with pytest.raises(InvalidInput, match="pixels"):
        reencode_reference(bomb, LIMITS)
    with pytest.raises(InvalidInput, match="pixels"):
        reencode_reference(encoded(Image.new("RGB", (300, 300)), "PNG"), UploadLimits(reference_max_pixels=256 * 256))


def test_an_animated_image_and_an_oversized_file_are_refused():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, format="WEBP", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidInput, match="animated"):
        reencode_reference(out.getvalue(), LIMITS)
    with pytest.raises(PayloadTooLarge):
        reencode_reference(b"\x89PNG" + bytes(2048), UploadLimits(reference_max_bytes=1024))


def test_a_fitting_lora_passes_with_its_rank():
    tensors = {**lora(rank=4), **lora(rank=8, a_in=32, b_out=32, module="text_encoder.q_proj", dtype="F32")}
    facts = validate_lora(safetensors(tensors, header_extra={"__metadata__": {"format": "pt"}}), TARGETS, LIMITS)
    assert facts.rank == 8 and facts.tensors == 4 and facts.components == ("text_encoder", "unet")


@pytest.mark.parametrize("data, reason", [
    (b"short", "shorter than"),
    (struct.pack("<Q", 100 * 1024 * 1024) + b"{}", "declares 104857600 bytes; at most"),  # a 100 MB header
    (struct.pack("<Q", 500) + b"{}", "declares 500 bytes but"),
    (struct.pack("<Q", 4) + b"\xff\xfe{}", "not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (safetensors({}), "no tensors"),
    (safetensors(lora(a_in=65)), "do not fit a linear layer of 64 -> 64"),
    (safetensors(lora(b_out=32)), "do not fit"),
    (safetensors({"unet.mid.to_q.lora_A.weight": ("F16", [4, 64]), "unet.mid.to_q.lora_B.weight": ("F16", [64, 5])}),
     "do not fit"),
    (safetensors(lora(rank=256)), "rank 256; at most 128"),
    (safetensors(lora(module="unet.nowhere")), "names no linear layer"),
    (safetensors(lora(module="vae.mid.to_q")), "is not a LoRA weight"),
    (safetensors({"unet.mid.to_q.weight": ("F16", [64, 64])}), "is not a LoRA weight"),
    (safetensors({"unet.mid.to_q.lora_A.weight": ("F16", [4, 64])}), "has no lora_B"),
    (safetensors(lora(dtype="I64")), "dtype 'I64'"),
    (safetensors(lora(), trailing=b"extra"), "bytes no tensor describes"),
    (safetensors(lora(), header_extra={"__metadata__": {"a": 1}}), "__metadata__"),
])
def test_a_lora_that_does_not_fit_is_refused_with_the_reason(data, reason):
    with pytest.raises(InvalidInput, match=reason):
        validate_lora(data, TARGETS, LIMITS)


def test_tensor_byte_ranges_must_be_exact_and_inside_the_file():
    good = safetensors(lora())
    size = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8:8 + size])
    header["unet.mid.to_q.lora_B.weight"]["data_offsets"] = [0, 512]  # overlaps lora_A
    raw = json.dumps(header).encode()
    with pytest.raises(InvalidInput, match="overlap"):
        validate_lora(struct.pack("<Q", len(raw)) + raw + good[8 + size:], TARGETS, LIMITS)
    header["unet.mid.to_q.lora_B.weight"]["data_offsets"] = [512, 10**9]
    raw = json.dumps(header).encode()
    with pytest.raises(InvalidInput, match="do not hold"):
        validate_lora(struct.pack("<Q", len(raw)) + raw + good[8 + size:], TARGETS, LIMITS)


def test_limits_and_unknown_models():
    with pytest.raises(PayloadTooLarge):
        validate_lora(safetensors(lora()), TARGETS, UploadLimits(lora_max_bytes=100))
    with pytest.raises(InvalidInput, match="tensors; at most 1"):
        validate_lora(safetensors(lora()), TARGETS, UploadLimits(lora_max_tensors=1))
    with pytest.raises(InvalidInput, match="no LoRA target table"):
        validate_lora(safetensors(lora()), lora_targets("some-other-model"), LIMITS)
    assert set(lora_targets("sdxl-base-1.0")) == {"unet", "text_encoder", "text_encoder_2"}
    assert lora_targets("sdxl-base-1.0")["unet"]["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"] \
        == (2048, 640)


@pytest.mark.parametrize("dtype, value", [("F16", "nan"), ("F16", "inf"), ("BF16", "nan"), ("BF16", "-inf"),
                                          ("F32", "nan"), ("F32", "inf")])
def test_a_lora_with_a_nan_or_infinite_weight_is_refused(dtype, value):
    """One such weight makes every render of the soul black; finite extremes of each dtype pass."""
    import numpy as np

    def with_weight(number: float) -> bytes:
        data = bytearray(safetensors(lora(dtype=dtype)))
        size = struct.unpack("<Q", data[:8])[0]
        if dtype == "BF16":
            word = (np.array([number], "<f4").view("<u4") >> 16).astype("<u2").tobytes()
        else:
            word = np.array([number], "<f2" if dtype == "F16" else "<f4").tobytes()
        at = 8 + size + 2 * len(word)  # the third weight of lora_A
        data[at:at + len(word)] = word
        return bytes(data)

    with pytest.raises(InvalidInput, match="NaN or infinite"):
        validate_lora(with_weight(float(value)), TARGETS, LIMITS)
    largest = {"F16": 65504.0, "BF16": 3.0e38, "F32": 3.0e38}[dtype]
    assert validate_lora(with_weight(-largest), TARGETS, LIMITS).rank == 4


@pytest.mark.parametrize("size, reason", [((1, 1), "at least 64 pixels"), ((63, 200), "at least 64 pixels"),
                                          ((16000, 64), "at most 4 times"), ((64, 300), "at most 4 times")])
def test_a_sliver_or_a_dot_is_not_a_reference(size, reason):
    """A 1x1 or 16000x1 image carried no identity and was stored; a strip would also be scaled to hundreds of
    thousands of pixels by the image encoder's shortest-side resize."""
    with pytest.raises(InvalidInput, match=reason):
        reencode_reference(encoded(Image.new("L", size), "PNG"), LIMITS)
    assert reencode_reference(encoded(Image.new("RGB", (64, 256)), "PNG"), LIMITS).height == 256


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\nzzzz", b"GIF89a....", encoded(Image.new("RGB", (64, 64)), "TIFF")])
def test_a_refusal_says_no_library_text(data):
    """Pillow's text named an object and its heap address (`<_io.BytesIO object at 0x7f...>`)."""
    with pytest.raises(InvalidInput) as refused:
        reencode_reference(data, LIMITS)
    assert refused.value.message == "not a usable image: send a PNG, JPEG or WebP"


def test_decodes_at_once_are_bounded_and_the_rest_wait_then_get_a_503(monkeypatch):
    """Eight 4096x4096 uploads of 130 KB each decoded together grew the api by 1.3 GB."""
    import threading

    from functions.core import uploads
    from functions.core.errors import Unavailable

    inside, peak, gate = [0], [0], threading.Event()
    lock = threading.Lock()

    def slow(data, limits):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        gate.wait(5)
        with lock:
            inside[0] -= 1
        return "decoded"

    monkeypatch.setattr(uploads, "_reencode", slow)
    monkeypatch.setattr(uploads, "DECODE_WAIT_S", 0.2)
    results = []

    def upload():
        try:
            results.append(uploads.reencode_reference(b"x", LIMITS))
        except Unavailable as exc:
            results.append(exc.headers["Retry-After"])

    threads = [threading.Thread(target=upload) for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # past the wait: three were turned away while two decode
    gate.set()
    for thread in threads:
        thread.join()
    assert peak[0] == uploads.MAX_CONCURRENT_DECODES == 2
    assert sorted(results) == ["2", "2", "2", "decoded", "decoded"]
