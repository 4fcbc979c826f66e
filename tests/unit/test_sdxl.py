"""Tiny-model CPU tests of the real SDXL pipeline code: building the offline stand-in, loading it (as a diffusers
folder and as an original single file), rendering with progress and cancellation, spec checks, the device choice,
and the shipped SDXL base 1.0 configs (checked against the real architecture's parameter counts on the meta
device, so nothing is allocated)."""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path

# The hub client reads this once, at import: set it before diffusers/transformers come in. Nothing here may
# reach the network; every load also passes local_files_only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionXLPipeline  # noqa: E402

from gpu_runner.pipelines import clip, single_file
from gpu_runner.pipelines.device import DeviceChoice, select_device  # noqa: E402
from gpu_runner.pipelines.sdxl import load_sdxl, render_image
from gpu_runner.pipelines.single_file import export_single_file
from gpu_runner.pipelines.specs import RenderSpec  # noqa: E402
from gpu_runner.pipelines.tiny import TINY_SDXL_NAME, build_tiny_sdxl, ensure_tiny_sdxl  # noqa: E402

CPU = DeviceChoice(device="cpu", dtype=torch.float32, name="cpu")
SPEC = RenderSpec(
    prompt="nova, a penguin in Paris", negative_prompt="blurry", width=64, height=64, steps=2, guidance=5.0, seed=7
)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("models")
    ensure_tiny_sdxl(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_pipe(model_cache: Path) -> StableDiffusionXLPipeline:
    return load_sdxl(None, model_cache, CPU)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def with_seed(seed: int) -> RenderSpec:
    return RenderSpec(**{**SPEC.__dict__, "seed": seed})


# --- the tiny model -----------------------------------------------------------------------------------------------


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_tiny_build_is_byte_identical_for_a_seed(tmp_path: Path, model_cache: Path):
    again = build_tiny_sdxl(tmp_path / "again")
    assert _digests(again) == _digests(model_cache / TINY_SDXL_NAME)
    other = build_tiny_sdxl(tmp_path / "other", seed=1)
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert _digests(other)[unet] != _digests(again)[unet]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_ensure_tiny_sdxl_builds_once(model_cache: Path):
    folder = model_cache / TINY_SDXL_NAME
    before = (folder / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_sdxl(model_cache) == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == before


def test_tiny_loads_offline_with_distinct_text_encoder_widths(tiny_pipe: StableDiffusionXLPipeline):
    assert isinstance(tiny_pipe, StableDiffusionXLPipeline)
    assert tiny_pipe.device.type == "cpu" and tiny_pipe.unet.dtype == torch.float32
    # Equal widths would make the single-file loader put encoder 1's weights into encoder 2 without a word.
    widths = (tiny_pipe.text_encoder.config.hidden_size, tiny_pipe.text_encoder_2.config.hidden_size)
    assert widths[0] != widths[1]
    assert tiny_pipe.unet.config.cross_attention_dim == sum(widths)
    assert tiny_pipe.tokenizer.pad_token == "<|endoftext|>" and tiny_pipe.tokenizer_2.pad_token == "!"
    assert tiny_pipe.tokenizer.model_max_length == 77


# --- rendering ----------------------------------------------------------------------------------------------------


def test_render_is_deterministic_for_a_seed(tiny_pipe: StableDiffusionXLPipeline):
    first, second = render_image(tiny_pipe, SPEC), render_image(tiny_pipe, SPEC)
    assert first.size == (64, 64) and first.mode == "RGB"
    assert np.array_equal(pixels(first), pixels(second))
    assert pixels(first).std() > 0  # an image, not a blank
    assert not np.array_equal(pixels(first), pixels(render_image(tiny_pipe, with_seed(8))))


def test_concurrent_renders_on_one_pipeline_match_serial_ones(tiny_pipe: StableDiffusionXLPipeline):
    expected = {seed: pixels(render_image(tiny_pipe, with_seed(seed))) for seed in (1, 2, 3)}
    results: dict[int, np.ndarray] = {}
    threads = [
        threading.Thread(target=lambda s=seed: results.__setitem__(s, pixels(render_image(tiny_pipe, with_seed(s)))))
        for seed in expected
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(results[seed], expected[seed]) for seed in expected)


def test_on_step_reports_each_step(tiny_pipe: StableDiffusionXLPipeline):
    calls: list[tuple[int, int]] = []
    render_image(tiny_pipe, RenderSpec(**{**SPEC.__dict__, "steps": 3}), on_step=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


class Canceled(Exception):
    pass


def test_an_exception_from_on_step_aborts_the_render(tiny_pipe: StableDiffusionXLPipeline):
    calls = []

    def cancel_at_second_step(done: int, total: int) -> None:
        calls.append(done)
        if done == 2:
            raise Canceled

    with pytest.raises(Canceled):
        render_image(tiny_pipe, RenderSpec(**{**SPEC.__dict__, "steps": 4}), on_step=cancel_at_second_step)
    assert calls == [1, 2]
    render_image(tiny_pipe, SPEC)  # the pipeline is still usable afterwards


@pytest.mark.parametrize(
    "change, message",
    [
        ({"width": 60}, "width"),
        ({"height": 4104}, "height"),
        ({"width": 32}, "width"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"guidance": -1.0}, "guidance"),
        ({"guidance": float("nan")}, "guidance"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"prompt": "   "}, "prompt"),
        ({"negative_prompt": None}, "negative_prompt"),
    ],
)
def test_invalid_spec_is_refused(change: dict, message: str):
    with pytest.raises(ValueError, match=message):
        RenderSpec(**{**SPEC.__dict__, **change})


# --- single-file checkpoints --------------------------------------------------------------------------------------


def test_single_file_round_trip_renders_the_same_image(
    tiny_pipe: StableDiffusionXLPipeline, model_cache: Path, tmp_path: Path
):
    checkpoint = export_single_file(tiny_pipe, tmp_path / "tiny-sdxl.safetensors")
    reloaded = load_sdxl(str(checkpoint), model_cache, CPU, config=model_cache / TINY_SDXL_NAME)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(tiny_pipe, name).state_dict(), getattr(reloaded, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert np.array_equal(pixels(render_image(tiny_pipe, SPEC)), pixels(render_image(reloaded, SPEC)))


def test_load_sdxl_refuses_what_it_cannot_load(model_cache: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_sdxl(str(tmp_path / "missing.safetensors"), model_cache, CPU)
    legacy = tmp_path / "model.ckpt"
    legacy.write_bytes(b"pickle")
    with pytest.raises(ValueError, match="safetensors"):
        load_sdxl(str(legacy), model_cache, CPU)


# --- the shipped SDXL base 1.0 configs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_architecture():
    """SDXL base 1.0's four models built from the shipped configs on the meta device: shapes, no memory."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = clip.SHIPPED_CONFIGS
    with init_empty_weights():
        return {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder")),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(configs / "text_encoder_2")),
        }


def test_shipped_configs_describe_sdxl_base(real_architecture):
    from diffusers import EulerDiscreteScheduler

    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in real_architecture.items()}
    # Parameter counts of stabilityai/stable-diffusion-xl-base-1.0.
    assert counts == {
        "unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
    }
    assert all(p.device.type == "meta" for p in real_architecture["unet"].parameters())
    index = StableDiffusionXLPipeline.load_config(clip.SHIPPED_CONFIGS)
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    scheduler = EulerDiscreteScheduler.from_pretrained(clip.SHIPPED_CONFIGS, subfolder="scheduler")
    assert scheduler.config.timestep_spacing == "leading" and scheduler.config.steps_offset == 1


def test_original_layout_of_sdxl_base_is_what_diffusers_reads(real_architecture):
    """The exporter's key layout, applied to the real architecture, is recognised as SDXL base and maps back onto
    every weight by diffusers' own converters (the tiny round trip covers two levels; this covers three)."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )

    unet, vae = real_architecture["unet"], real_architecture["vae"]
    original = single_file.original_state_dict(**real_architecture)
    assert infer_diffusers_model_type(original) == "xl_base"
    assert convert_ldm_unet_checkpoint(original, unet.config).keys() == unet.state_dict().keys()
    assert convert_ldm_vae_checkpoint(original, vae.config).keys() == vae.state_dict().keys()


# --- the CLIP tokenizer files -------------------------------------------------------------------------------------


def _fake_bpe(path: Path, merges: list[str]) -> Path:
    path.write_bytes(gzip.compress(("\"bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(merges) + "\n").encode()))
    return path


def test_clip_tokenizer_files_follow_openai_layout(tmp_path: Path):
    from transformers import CLIPTokenizer

    bpe = _fake_bpe(tmp_path / "bpe.txt.gz", ["p e", "pe n</w>", "Ġ a"])
    clip.build_clip_tokenizer_files(tmp_path / "tok", bpe)
    vocab = CLIPTokenizer.from_pretrained(tmp_path / "tok", model_max_length=77).get_vocab()
    assert len(vocab) == 256 + 256 + 3 + 2
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["pe"] == 512 and vocab["pen</w>"] == 513
    assert vocab["<|startoftext|>"] == 515 and vocab["<|endoftext|>"] == 516
    assert (tmp_path / "tok" / "merges.txt").read_text().splitlines()[:2] == ["#version: 0.2", "p e"]
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert tokenizer("Pen").input_ids == [515, 513, 516]  # lower-cased, merged, wrapped in the specials


def test_config_folder_for_single_files_is_complete(tmp_path: Path):
    from transformers import CLIPTokenizer

    folder = clip.sdxl_config_folder(tmp_path, _fake_bpe(tmp_path / "bpe.txt.gz", ["p e"]))
    assert StableDiffusionXLPipeline.load_config(folder)["unet"] == ["diffusers", "UNet2DConditionModel"]
    first = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    second = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    assert (first.pad_token, second.pad_token) == ("<|endoftext|>", "!")
    assert first.model_max_length == second.model_max_length == 77
    assert clip.sdxl_config_folder(tmp_path) == folder  # built once; no BPE needed the second time


def test_missing_clip_vocabulary_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(clip, "find_clip_bpe", lambda: None)
    with pytest.raises(FileNotFoundError, match="open_clip_torch"):
        clip.sdxl_config_folder(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-built left behind


def test_real_clip_vocabulary(tmp_path: Path):
    """The shipped merges make OpenAI CLIP's real tokenizer: its size, special tokens and known token ids."""
    from transformers import CLIPTokenizer

    assert clip.find_clip_bpe() is not None
    clip.build_clip_tokenizer_files(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == 49408 and tokenizer.eos_token_id == 49407 and tokenizer.bos_token_id == 49406
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


# --- the device -----------------------------------------------------------------------------------------------------


def test_forced_cpu_uses_full_precision():
    assert select_device(force_cpu=True, memory_fraction=0.5) == CPU


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_memory_fraction_out_of_range_is_refused(fraction: float):
    with pytest.raises(ValueError, match="memory_fraction"):
        select_device(force_cpu=True, memory_fraction=fraction)


def test_cuda_settings_apply_to_a_pipeline(model_cache: Path):
    """optimize_for_device's GPU branch, run on the CPU so that API drift shows without a GPU."""
    from gpu_runner.pipelines.sdxl import optimize_for_device

    pipe = load_sdxl(None, model_cache, CPU)
    optimize_for_device(pipe, DeviceChoice(device="cuda:0", dtype=torch.float16, name="cuda:test"))
    assert pipe.vae.use_tiling
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert render_image(pipe, SPEC).size == (64, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_renders_the_tiny_model_in_half_precision(model_cache: Path):
    device = select_device(force_cpu=False, memory_fraction=0.9)
    assert device.device.startswith("cuda") and device.dtype == torch.float16 and device.name.startswith("cuda:")
    pipe = load_sdxl(None, model_cache, device)
    assert pipe.unet.dtype == torch.float16
    first, second = render_image(pipe, SPEC), render_image(pipe, SPEC)
    assert np.array_equal(pixels(first), pixels(second))


def test_a_batch_renders_each_item_as_its_solo_render(tiny_pipe: StableDiffusionXLPipeline):
    from gpu_runner.pipelines.sdxl import render_images
    from gpu_runner.pipelines.specs import batch_key

    specs = [replace(with_seed(seed), prompt=prompt) for seed, prompt in ((3, "a penguin"), (4, "an owl at dusk"))]
    assert batch_key(specs[0]) == batch_key(specs[1])
    together = render_images(tiny_pipe, specs)
    for spec, image in zip(specs, together):
        solo = pixels(render_image(tiny_pipe, spec))
        # Same seed per item: equal up to float rounding of a batched matmul (at most 1 level on a few pixels).
        assert np.abs(pixels(image).astype(int) - solo.astype(int)).max() <= 1
    assert np.abs(pixels(together[0]).astype(int) - pixels(together[1]).astype(int)).mean() > 5
    with pytest.raises(AssertionError):
        render_images(tiny_pipe, [specs[0], replace(specs[1], steps=specs[1].steps + 1)])


def test_a_render_whose_latents_turn_nan_fails_instead_of_giving_a_black_image(tiny_pipe: StableDiffusionXLPipeline):
    from gpu_runner.errors import InvalidJob, NonFiniteRender

    poisoned = tiny_pipe.unet.register_forward_hook(
        lambda module, args, output: (output[0] * float("nan"),) + tuple(output[1:]))
    try:
        with pytest.raises(NonFiniteRender, match="NaN or infinite") as raised:
            render_image(tiny_pipe, SPEC)
    finally:
        poisoned.remove()
    assert isinstance(raised.value, InvalidJob)  # the job fails with the reason; the message is acked
    assert pixels(render_image(tiny_pipe, SPEC)).std() > 0
