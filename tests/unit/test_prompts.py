"""Long-prompt encoding (gpu_runner/pipelines/prompts.py) with CLIP's real tokenizer, built from the BPE merges shipped in
gpu_runner/configs/clip_bpe: the style suffix survives long cues, short prompts encode exactly as diffusers does,
and the tiny SDXL renders from the embeddings."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read once at import by the hub client; nothing here goes online

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

from functions.core.catalog import shipped_souls  # noqa: E402
from functions.core.keys import compose_prompt  # noqa: E402
from gpu_runner.pipelines import prompts
from gpu_runner.pipelines.prompts import encode_prompts, tokenize_prompt  # noqa: E402
from gpu_runner.pipelines.device import DeviceChoice  # noqa: E402
from gpu_runner.pipelines.clip import SHIPPED_CONFIGS, sdxl_config_folder
from gpu_runner.pipelines.sdxl import load_sdxl, render_image
from gpu_runner.pipelines.specs import RenderSpec  # noqa: E402
from gpu_runner.pipelines.tiny import tiny_sdxl_pipeline  # noqa: E402

CPU = DeviceChoice(device="cpu", dtype=torch.float32, name="cpu")
NOVA = shipped_souls()["nova"].style  # the shipped soul: a 14-token prefix and a 14-token style suffix
SUFFIX = NOVA.prompt_suffix
CUE_200 = (
    "at 3am in Lisbon's Alfama: tram #28 (yellow), azulejo tiles, pastéis de nata & bica, fado from a tasca, "
    "graffiti stencils, cats on steps; wet cobbles, 2 fishermen, 1 guitar, neon 'ABERTO' sign, fog"
)
CUE_EMOJI = "🐧🍜🎐🏮🎶🌃🍡🥟🧋🦑" * 6


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    folder = sdxl_config_folder(tmp_path_factory.mktemp("sdxl-configs"))  # the real vocabulary, from the shipped BPE
    return (
        CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"),
    )


@pytest.fixture(scope="module")
def byte_pipe(tmp_path_factory: pytest.TempPathFactory):
    """The tiny SDXL as the runner loads it on a CPU: byte-level tokenizers (every byte a token)."""
    return load_sdxl(None, tmp_path_factory.mktemp("models"), CPU)


@pytest.fixture(scope="module")
def real_vocab_pipe(tokenizers):
    """The tiny SDXL with CLIP's real tokenizers and text encoders configured like SDXL base 1.0's shipped configs
    (the real vocabulary, and eos_token_id 2: the pooled vector is taken at the highest token id, the EOS), at the
    tiny model's widths."""
    pipe = tiny_sdxl_pipeline()
    torch.manual_seed(1)

    def shrunk(subfolder: str, like) -> CLIPTextConfig:
        config = CLIPTextConfig.from_pretrained(SHIPPED_CONFIGS / subfolder)
        for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "projection_dim"):
            setattr(config, field, getattr(like.config, field))
        return config

    pipe.text_encoder = CLIPTextModel(shrunk("text_encoder", pipe.text_encoder)).float().eval()
    pipe.text_encoder_2 = CLIPTextModelWithProjection(shrunk("text_encoder_2", pipe.text_encoder_2)).float().eval()
    assert pipe.text_encoder_2.config.eos_token_id == 2 and pipe.text_encoder_2.config.vocab_size == 49408
    pipe.tokenizer, pipe.tokenizer_2 = tokenizers
    pipe.set_progress_bar_config(disable=True)
    return pipe


def contains(haystack: list[int], needle: list[int]) -> bool:
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


# --- tokens -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cue", [CUE_200, CUE_EMOJI], ids=["200-chars", "60-emoji"])
def test_a_long_cue_keeps_every_token_of_the_style_suffix(tokenizers, cue: str):
    assert len(CUE_200) <= 200 and len(CUE_EMOJI) == 60
    prompt = compose_prompt(NOVA, cue)
    for tokenizer in tokenizers:
        suffix = ids(tokenizer, SUFFIX)
        # The finding: diffusers' truncation to 77 tokens drops the whole suffix.
        truncated = tokenizer(prompt, truncation=True, max_length=77).input_ids
        assert truncated[-1] == tokenizer.eos_token_id and not contains(truncated, suffix[:2])
        tokens = tokenize_prompt(tokenizer, prompt)
        assert tokens.dropped == 0 and len(tokens.windows) >= 2
        assert all(len(w) == 77 and w[0] == tokenizer.bos_token_id for w in tokens.windows)
        assert all(tokenizer.eos_token_id in w for w in tokens.windows)
        assert tokens.content_ids(tokenizer) == ids(tokenizer, prompt)  # nothing lost, nothing reordered
        assert contains(tokens.content_ids(tokenizer), suffix)


def test_windows_break_after_a_comma_near_their_end(tokenizers):
    tokenizer = tokenizers[0]
    prompt = ", ".join(f"word{n}" for n in range(60))
    windows = tokenize_prompt(tokenizer, prompt).windows
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    first = [i for i in windows[0] if i not in (tokenizer.bos_token_id, tokenizer.eos_token_id)]
    assert first[-1] == comma and len(first) > 75 - prompts.COMMA_LOOKBACK


def test_a_short_prompt_is_one_window_like_diffusers(tokenizers):
    for tokenizer in tokenizers:
        expected = tokenizer("nova, a penguin in Paris", padding="max_length", max_length=77, truncation=True)
        assert tokenize_prompt(tokenizer, "nova, a penguin in Paris").windows == (tuple(expected.input_ids),)
        assert tokenize_prompt(tokenizer, "").windows == (tuple(tokenizer("", padding="max_length").input_ids),)


def test_the_budget_drops_the_middle_and_keeps_prefix_and_suffix(tokenizers):
    tokenizer = tokenizers[0]
    prompt = compose_prompt(NOVA, CUE_EMOJI * 8)
    tokens = tokenize_prompt(tokenizer, prompt, max_chunks=3)
    assert len(tokens.windows) == 3 and tokens.dropped == len(ids(tokenizer, prompt)) - 3 * 75
    kept = tokens.content_ids(tokenizer)
    assert kept[:14] == ids(tokenizer, NOVA.prompt_prefix) and contains(kept, ids(tokenizer, SUFFIX))
    with pytest.raises(ValueError, match="max_chunks"):
        tokenize_prompt(tokenizer, prompt, max_chunks=0)


# --- embeddings ---------------------------------------------------------------------------------------------------


def diffusers_embeds(pipe, prompt: str, negative: str) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return pipe.encode_prompt(prompt, device=pipe.device, negative_prompt=negative or None)


@pytest.mark.parametrize("negative", ["blurry, lowres", ""], ids=["negative", "no-negative"])
@pytest.mark.parametrize("which", ["byte_pipe", "real_vocab_pipe"])
def test_a_short_prompt_encodes_as_diffusers_does(request: pytest.FixtureRequest, which: str, negative: str):
    pipe = request.getfixturevalue(which)
    ours = encode_prompts(pipe, ["nova, a penguin in Paris"], [negative])
    theirs = diffusers_embeds(pipe, "nova, a penguin in Paris", negative)
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for name, expected in zip(names, theirs):
        assert ours[name].shape == expected.shape, name
        torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-5)
    assert bool(ours["negative_prompt_embeds"].any()) == bool(negative)  # zeros for no negative, as SDXL trains


def test_a_batch_pads_prompts_and_negatives_to_the_longest(real_vocab_pipe):
    pipe = real_vocab_pipe
    batch = ["nova, a penguin in Paris", compose_prompt(NOVA, CUE_EMOJI), compose_prompt(NOVA, CUE_200)]
    negatives = ["", "blurry", ", ".join([CUE_200] * 3)]  # the longest: 3 windows
    chunks = max(len(tokenize_prompt(pipe.tokenizer, text).windows) for text in batch + negatives)
    assert chunks >= 3
    out = encode_prompts(pipe, batch, negatives)
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape == (3, chunks * 77, width)
    projection = pipe.text_encoder_2.config.projection_dim
    assert out["pooled_prompt_embeds"].shape == out["negative_pooled_prompt_embeds"].shape == (3, projection)
    assert not out["negative_prompt_embeds"][0].any() and out["negative_prompt_embeds"][1:].abs().sum(-1).all()
    # Each row is what that prompt gives alone, padded with windows of the empty prompt.
    alone = encode_prompts(pipe, batch[:1], negatives[1:2])
    torch.testing.assert_close(out["prompt_embeds"][0, :77], alone["prompt_embeds"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["negative_prompt_embeds"][1, :77], alone["negative_prompt_embeds"][0])
    empty = encode_prompts(pipe, [""], [""])["prompt_embeds"][0]
    torch.testing.assert_close(out["prompt_embeds"][0, 77:154], empty, rtol=1e-5, atol=1e-5)
    # The suffix changes the conditioning of the long prompt; diffusers' truncated encoding never sees it.
    without = encode_prompts(pipe, [f"{NOVA.prompt_prefix}, {CUE_200}"], [""])["prompt_embeds"][0]
    assert not torch.allclose(out["prompt_embeds"][2, : without.shape[0]], without, atol=1e-4)


def test_mismatched_batches_are_refused(byte_pipe):
    with pytest.raises(ValueError, match="one negative prompt per prompt"):
        encode_prompts(byte_pipe, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="one negative prompt per prompt"):
        encode_prompts(byte_pipe, [], [])


# --- rendering ----------------------------------------------------------------------------------------------------


def render(pipe, kwargs: dict, seeds: list[int]) -> list[np.ndarray]:
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    with torch.inference_mode():
        images = pipe(**kwargs, width=64, height=64, num_inference_steps=2, guidance_scale=5.0,
                      generator=generators, output_type="pil").images
    assert all(image.size == (64, 64) for image in images)
    return [np.asarray(image, dtype=np.int16) for image in images]


def test_a_short_prompt_renders_the_pixels_of_the_text_path(byte_pipe):
    spec = RenderSpec(prompt="nova, a penguin in Paris", negative_prompt="blurry", width=64, height=64, steps=2,
                      guidance=5.0, seed=7)
    [image] = render(byte_pipe, encode_prompts(byte_pipe, [spec.prompt], [spec.negative_prompt]), [spec.seed])
    assert np.abs(image - np.asarray(render_image(byte_pipe, spec), dtype=np.int16)).max() <= 1


def test_a_batch_of_one_window_count_renders_each_item_as_alone(byte_pipe):
    long_prompt = compose_prompt(NOVA, CUE_200[:80])  # the byte-level tokenizer: a token per byte
    other = compose_prompt(NOVA, "in Paris, " * 8)
    assert prompts.window_count(byte_pipe, long_prompt, "") == prompts.window_count(byte_pipe, other, "blurry") > 1
    batch = render(byte_pipe, encode_prompts(byte_pipe, [long_prompt, other], ["", "blurry"]), [7, 8])
    alone = render(byte_pipe, encode_prompts(byte_pipe, [other], ["blurry"]), [8])
    assert np.abs(batch[1] - alone[0]).max() <= 1 and batch[0].std() > 0
    # A shorter partner would be padded with empty windows: a different conditioning, so not batched with these.
    assert prompts.window_count(byte_pipe, "nova", "blurry") == 1
