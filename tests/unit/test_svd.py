"""The SVD stage on the tiny offline model (the real diffusers pipeline on a CPU), and the shipped SVD-XT configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gpu_runner.pipelines import specs, svd, tiny

SOURCE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return svd.load_svd(None, tmp_path_factory.mktemp("svd-cache"), "cpu", torch.float32)


def spec(**changes):
    base = dict(image=SOURCE, num_frames=4, fps=7, width=64, height=64, steps=2, motion_bucket_id=127,
                noise_aug_strength=0.02, decode_chunk_size=4, seed=3)
    return specs.AnimationSpec(**{**base, **changes})


def test_frames_have_the_requested_count_and_size_and_are_deterministic(pipe):
    steps = []
    first = svd.render_frames(pipe, spec(), on_step=lambda done, total: steps.append((done, total)))
    assert len(first) == 4 and all(f.size == (64, 64) for f in first)
    assert steps == [(1, 2), (2, 2)]
    again = svd.render_frames(pipe, spec())
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    other = svd.render_frames(pipe, spec(seed=4))
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, other))


def test_an_exception_from_on_step_stops_rendering(pipe):
    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        svd.render_frames(pipe, spec(steps=3), on_step=stop)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"num_frames": 1}, "num_frames"), ({"width": 70}, "width"), ({"steps": 0}, "steps"), ({"fps": 0}, "fps"),
     ({"motion_bucket_id": 5000}, "motion_bucket_id"), ({"noise_aug_strength": 2.0}, "noise_aug"),
     ({"decode_chunk_size": 0}, "decode_chunk_size")],
)
def test_invalid_specs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        spec(**change)


def test_tiny_model_builds_once_and_reloads(tmp_path):
    folder = tiny.ensure_tiny_svd(tmp_path)
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert tiny.ensure_tiny_svd(tmp_path) == folder and (folder / "model_index.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("bad", ["../etc/passwd", "file:///etc/passwd", "http://169.254.169.254/x", "a b/c"])
def test_model_strings_that_are_neither_a_folder_nor_a_hub_id_are_refused(bad, tmp_path):
    with pytest.raises(ValueError, match="SVD_MODEL"):
        svd.load_svd(bad, tmp_path, "cpu", torch.float32)


def test_shipped_configs_are_the_svd_xt_architecture():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tiny.SVD_CONFIGS
    with init_empty_weights():
        unet = UNetSpatioTemporalConditionModel.from_config(UNetSpatioTemporalConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKLTemporalDecoder.from_config(AutoencoderKLTemporalDecoder.load_config(folder / "vae"))
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(folder / "image_encoder"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(unet) - 1.52e9) < 0.01e9
    assert 90e6 < count(vae) < 110e6 and 600e6 < count(encoder) < 660e6
    assert CLIPImageProcessor.from_pretrained(folder / "feature_extractor").crop_size["height"] == 224


@pytest.mark.parametrize(
    ("free", "expected"), [(None, "resident"), (80 * 2**30, "resident"), (16 * 2**30, "offload")]
)
def test_residency_policy(free, expected):
    assert svd.residency_policy(free, sdxl_bytes=7 * 2**30, svd_bytes=int(4.5 * 2**30)) == expected
