"""GIF, MP4 and WebP encoders: each output decodes with the frame count, timing and codec asked for."""

import io

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from gpu_runner.stages.encode import encode_all, encode_gif, encode_mp4, encode_webp, shared_palette


def frames(n=10, size=(96, 64)):
    out = []
    for i in range(n):
        yy, xx = np.mgrid[0:size[1], 0:size[0]]
        rgb = np.stack([(xx * 2 + i * 9) % 256, (yy * 3) % 256, np.full_like(xx, 40 + 20 * i)], axis=-1)
        out.append(Image.fromarray(rgb.astype(np.uint8)))
    return out


@pytest.mark.parametrize("palette", ["shared", "per_frame"])
def test_gif_has_every_frame_at_the_fps(palette):
    data = encode_gif(frames(10), fps=8, palette=palette)
    gif = Image.open(io.BytesIO(data))
    assert gif.format == "GIF" and gif.n_frames == 10 and gif.info["loop"] == 0
    assert abs(gif.info["duration"] - 125) <= 10  # GIF stores delays in centiseconds
    gif.seek(9)
    assert gif.size == (96, 64)


def test_shared_palette_has_at_most_256_colours():
    palette = shared_palette(frames(30))
    assert len(palette.getpalette()) // 3 <= 256


def probe(data: bytes, tmp_path) -> dict:
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    return {"meta": meta, "frames": count}


def test_mp4_is_h264_yuv420p_faststart(tmp_path):
    data = encode_mp4(frames(12), fps=6)
    info = probe(data, tmp_path)
    assert info["frames"] == 12
    assert info["meta"]["size"] == (96, 64) and abs(info["meta"]["fps"] - 6) < 0.01
    assert "h264" in info["meta"]["codec"] and "yuv420p" in info["meta"]["pix_fmt"]
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: the index comes first


def test_mp4_refuses_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        encode_mp4(frames(3, size=(95, 64)), fps=6)


def test_webp_is_animated_with_every_frame():
    image = Image.open(io.BytesIO(encode_webp(frames(7), fps=7)))
    assert image.format == "WEBP" and image.n_frames == 7 and getattr(image, "is_animated", False)


def test_encode_all_and_bad_input():
    media = encode_all(frames(4), 5, ("gif", "mp4", "webp"))
    assert [m.format for m in media] == ["gif", "mp4", "webp"]
    assert [m.content_type for m in media] == ["image/gif", "video/mp4", "image/webp"]
    with pytest.raises(ValueError, match="unknown formats"):
        encode_all(frames(2), 5, ("avi",))
    with pytest.raises(ValueError, match="no frames"):
        encode_gif([], 5)
    with pytest.raises(ValueError, match="fps"):
        encode_webp(frames(2), 0)
