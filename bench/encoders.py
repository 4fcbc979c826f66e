"""GIF encoders side by side on one animation: our shared palette, our per-frame palettes, and ffmpeg's
palettegen/paletteuse (the usual reference), all on the same 25 frames in one run. Reports size, mean PSNR of the
decoded GIF against the source frames, encode time (median of repeats) and each ratio to ffmpeg. Also times the
MP4 and WebP encoders on the same frames."""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_runner.stages.encode import encode_gif, encode_mp4, encode_webp  # noqa: E402

FRAMES, WIDTH, HEIGHT, FPS, REPEATS = 25, 512, 288, 7, 3


def animation() -> list[Image.Image]:
    """Smooth gradients, a moving disc and mild noise: the kind of picture SVD makes, deterministic."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    frames = []
    for t in range(FRAMES):
        r = 128 + 100 * np.sin(xx / 90 + t / 6)
        g = 128 + 100 * np.sin(yy / 70 - t / 9)
        b = 128 + 80 * np.cos((xx + yy) / 120 + t / 5)
        cx, cy = 80 + t * 14, HEIGHT / 2 + 60 * np.sin(t / 4)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < 45**2
        rgb = np.stack([r, g, b], axis=-1)
        rgb[disc] = [240, 220, 60]
        rgb += rng.normal(0, 4, rgb.shape)
        frames.append(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)))
    return frames


def ffmpeg_gif(frames: list[Image.Image]) -> bytes:
    raw = b"".join(f.tobytes() for f in frames)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.gif"
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                   "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "-", "-filter_complex",
                   "[0:v]split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=floyd_steinberg",
                   "-loop", "0", str(out)]
        subprocess.run(command, input=raw, check=True, capture_output=True)
        return out.read_bytes()


def psnr(data: bytes, frames: list[Image.Image]) -> float:
    gif = Image.open(io.BytesIO(data))
    scores = []
    for index, source in enumerate(frames):
        gif.seek(index)
        decoded = np.asarray(gif.convert("RGB"), dtype=np.float64)
        mse = np.mean((decoded - np.asarray(source, dtype=np.float64)) ** 2)
        scores.append(10 * np.log10(255**2 / mse) if mse else 99.0)
    return float(np.mean(scores))


def timed(encode, frames) -> tuple[bytes, float]:
    times, data = [], b""
    for _ in range(REPEATS):
        started = time.perf_counter()
        data = encode(frames)
        times.append(time.perf_counter() - started)
    return data, statistics.median(times)


def main() -> int:
    frames = animation()
    rows = {
        "ffmpeg palettegen/paletteuse": timed(ffmpeg_gif, frames),
        "soul GIF, shared palette": timed(lambda f: encode_gif(f, FPS, "shared"), frames),
        "soul GIF, per-frame palettes": timed(lambda f: encode_gif(f, FPS, "per_frame"), frames),
    }
    ref_data, ref_time = rows["ffmpeg palettegen/paletteuse"]
    ref_psnr = psnr(ref_data, frames)
    print(f"### GIF encoders ({FRAMES} frames, {WIDTH}x{HEIGHT}, median of {REPEATS})\n")
    print("| encoder | size (KiB) | PSNR (dB) | time (s) | size / ffmpeg | time / ffmpeg | PSNR - ffmpeg (dB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (data, seconds) in rows.items():
        score = psnr(data, frames)
        print(f"| {name} | {len(data) / 1024:.0f} | {score:.2f} | {seconds:.3f} | {len(data) / len(ref_data):.2f} "
              f"| {seconds / ref_time:.2f} | {score - ref_psnr:+.2f} |")
    mp4, mp4_time = timed(lambda f: encode_mp4(f, FPS), frames)
    webp, webp_time = timed(lambda f: encode_webp(f, FPS), frames)
    print(f"\n- MP4 (H.264, crf 20): {len(mp4) / 1024:.0f} KiB in {mp4_time:.3f} s; "
          f"animated WebP (q 80): {len(webp) / 1024:.0f} KiB in {webp_time:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
