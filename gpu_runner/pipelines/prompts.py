"""Long prompts for SDXL: encode a batch of prompts and negative prompts into the four embedding tensors that a
`StableDiffusionXLPipeline` takes instead of text, without dropping anything past CLIP's 77-token window.

Why: a soul's prompt is "prefix, cue, style suffix". diffusers truncates each prompt to 77 tokens, so a long cue
(200 characters, or 60 emoji with the real CLIP vocabulary) pushed the whole style suffix out and the image lost
the soul's style. Here the prompt's tokens are split into windows of 75 (each wrapped in BOS/EOS and padded to 77,
exactly as diffusers wraps a short prompt), every window goes through both text encoders, and the per-window
hidden states are concatenated along the sequence: what compel and A1111 do for SDXL. A prompt of at most 75 tokens
gives exactly diffusers' own `encode_prompt` result. Windows break after the last comma near their end, so a
phrase of the style stays in one window. Past `max_chunks` windows, tokens are dropped from the middle of the
prompt (the cue), never from its end (the style) or its start (the style's prefix): the budget bounds the UNet's
cross-attention cost for any input.

Own code rather than compel: compel parses its weighting syntax ("word++", "(word)1.3", ".and()") out of the text,
and a cue is user text that must mean what it says; and SDXL's zero negative for an empty negative prompt is kept
per batch item here. Pure functions over a pipeline's tokenizers and text encoders; no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import torch

log = structlog.get_logger(__name__)

WINDOW = 77  # CLIP's context: BOS + 75 tokens + EOS
CHUNK_TOKENS = WINDOW - 2
MAX_CHUNKS = 4  # 300 prompt tokens: a prefix, a 500-character cue and a style suffix in words fit with room
COMMA_LOOKBACK = 20  # a window ends after a comma among its last this-many tokens, when there is one


@dataclass(frozen=True)
class PromptTokens:
    """One prompt as the text encoders see it: its windows of exactly 77 ids, and how many tokens the budget
    dropped from its middle (0 for all but pathological prompts)."""

    windows: tuple[tuple[int, ...], ...]
    dropped: int

    def content_ids(self, tokenizer) -> list[int]:
        """The prompt's tokens in order, without the BOS/EOS/padding each window adds."""
        special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
        return [i for window in self.windows for i in window if i not in special]


def tokenize_prompt(tokenizer, prompt: str, max_chunks: int = MAX_CHUNKS) -> PromptTokens:
    """Split `prompt` into 77-id windows for `tokenizer` (see the module docstring)."""
    if max_chunks < 1:
        raise ValueError(f"max_chunks must be >= 1, got {max_chunks!r}")
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids
    ids, dropped = _fit_budget(ids, max_chunks * CHUNK_TOKENS)
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks = _split(ids, comma if comma != tokenizer.unk_token_id else None)
    if len(chunks) > max_chunks:  # comma breaks left windows part-empty: fall back to full windows
        chunks = _split(ids, None)
    return PromptTokens(tuple(_window(tokenizer, chunk) for chunk in chunks), dropped)


def _fit_budget(ids: list[int], budget: int) -> tuple[list[int], int]:
    """Drop tokens from the middle: the head keeps a prompt's prefix, the tail its style suffix."""
    if len(ids) <= budget:
        return ids, 0
    tail = budget // 2
    return ids[: budget - tail] + ids[len(ids) - tail :], len(ids) - budget


def _split(ids: list[int], comma: int | None) -> list[list[int]]:
    chunks: list[list[int]] = []
    rest = ids
    while len(rest) > CHUNK_TOKENS:
        cut = CHUNK_TOKENS
        if comma is not None:
            tail = rest[CHUNK_TOKENS - COMMA_LOOKBACK : CHUNK_TOKENS]
            if comma in tail:
                cut = CHUNK_TOKENS - COMMA_LOOKBACK + len(tail) - tail[::-1].index(comma)
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    return chunks


def _window(tokenizer, chunk: list[int]) -> tuple[int, ...]:
    ids = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
    return tuple(ids + [tokenizer.pad_token_id] * (WINDOW - len(ids)))


def window_count(pipe, prompt: str, negative_prompt: str, *, max_chunks: int = MAX_CHUNKS) -> int:
    """How many windows `encode_prompts` gives this item alone. Batch only items with the same count: a shorter
    item padded with empty windows gets a slightly different conditioning (its image would then depend on its batch
    partners, and a re-run of the job alone would not reproduce it)."""
    texts = [prompt] if not negative_prompt and pipe.config.force_zeros_for_empty_prompt else [prompt, negative_prompt]
    tokenizers = (pipe.tokenizer, pipe.tokenizer_2)
    return max(len(tokenize_prompt(tok, text, max_chunks).windows) for tok in tokenizers for text in texts)


def encode_prompts(
    pipe, prompts: list[str], negative_prompts: list[str], *, max_chunks: int = MAX_CHUNKS
) -> dict[str, torch.Tensor]:
    """`prompt_embeds`, `negative_prompt_embeds`, `pooled_prompt_embeds` and `negative_pooled_prompt_embeds` for
    `pipe(**kwargs, ...)`, one row per prompt. Every prompt and negative of the batch is padded (with windows of
    the empty prompt) to the same number of windows. An empty negative gives zeros when the pipeline is configured
    so (`force_zeros_for_empty_prompt`, SDXL base), as diffusers does for "no negative prompt". Items of one
    `window_count` encode exactly as each would alone."""
    if not prompts or len(prompts) != len(negative_prompts):
        raise ValueError(
            f"need one negative prompt per prompt (empty for none), got {len(prompts)} and {len(negative_prompts)}"
        )
    zero_negative = [not text and bool(pipe.config.force_zeros_for_empty_prompt) for text in negative_prompts]
    texts = list(prompts) + [text for text, zero in zip(negative_prompts, zero_negative) if not zero]
    encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    tokens = [[tokenize_prompt(tokenizer, text, max_chunks) for text in texts] for tokenizer, _ in encoders]
    for prompt, item in zip(prompts, tokens[0]):
        if item.dropped:
            log.warning("prompt_over_token_budget", dropped_tokens=item.dropped, max_chunks=max_chunks,
                        prompt_chars=len(prompt))
    chunks = max(len(item.windows) for per_encoder in tokens for item in per_encoder)

    hidden, pooled = [], None
    with torch.no_grad():
        for (tokenizer, encoder), per_encoder in zip(encoders, tokens):
            empty = _window(tokenizer, [])
            rows = [w for item in per_encoder for w in item.windows + (empty,) * (chunks - len(item.windows))]
            out = encoder(torch.tensor(rows, device=encoder.device), output_hidden_states=True)
            # SDXL conditions on the penultimate layer of both encoders, and on encoder 2's pooled projection.
            hidden.append(out.hidden_states[-2].reshape(len(texts), chunks * WINDOW, -1))
            if out[0].ndim == 2:
                # The pooled vector of each prompt's first window: the same as diffusers' truncated prompt.
                pooled = out[0].reshape(len(texts), chunks, -1)[:, 0]
    if pooled is None:
        raise ValueError("text_encoder_2 gives no pooled output: not an SDXL pipeline")
    embeds = torch.cat(hidden, dim=-1).to(dtype=pipe.text_encoder_2.dtype, device=pipe._execution_device)
    pooled = pooled.to(dtype=pipe.text_encoder_2.dtype, device=pipe._execution_device)

    count = len(prompts)
    negatives, negative_pooled = _negatives(embeds, pooled, count, zero_negative)
    return {
        "prompt_embeds": embeds[:count],
        "negative_prompt_embeds": negatives,
        "pooled_prompt_embeds": pooled[:count],
        "negative_pooled_prompt_embeds": negative_pooled,
    }


def _negatives(
    embeds: torch.Tensor, pooled: torch.Tensor, count: int, zero: list[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the encoded negatives (after the `count` prompts) in batch order, zeros where `zero`."""
    encoded = iter(range(count, embeds.shape[0]))
    rows = [None if is_zero else next(encoded) for is_zero in zero]
    negatives = torch.stack([torch.zeros_like(embeds[0]) if r is None else embeds[r] for r in rows])
    negative_pooled = torch.stack([torch.zeros_like(pooled[0]) if r is None else pooled[r] for r in rows])
    return negatives, negative_pooled
