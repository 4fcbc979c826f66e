"""Prompt keys, style fingerprints, job names and seeds: pure, deterministic functions of a request.

The prompt key (pk) names "the same picture request": kind, soul, normalized cue, style fingerprint and the
generation parameters that change pixels (size, steps, guidance, model). Job ids are derived from (pk, variant
index) so that every creator of the same work computes the same id and Firestore's create() admits exactly one."""

from __future__ import annotations

import hashlib
import json

from schemas.documents import Style

KEY_VERSION = 2  # 2: normalization keeps meaningful punctuation and drops every invisible character


def _digest(payload: object) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def style_fingerprint(style: Style) -> str:
    return _digest(style.model_dump(mode="json"))[:16]


def prompt_key(*, kind: str, soul_id: str, cue: str, style: Style, model_tag: str) -> str:
    """`cue` must already be normalized; the caller owns normalization so the key never hides it."""
    return _digest(
        {
            "v": KEY_VERSION,
            "kind": kind,
            "soul": soul_id,
            "cue": cue,
            "style": style_fingerprint(style),
            "params": {"w": style.width, "h": style.height, "steps": style.steps, "cfg": style.guidance},
            "model": model_tag,
        }
    )[:32]


def image_job_id(pk: str, variant_index: int, retry: int = 0) -> str:
    base = f"img-{pk}-{variant_index}"
    return base if retry == 0 else f"{base}-r{retry}"


def variant_seed(pk: str, variant_index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{pk}:{variant_index}".encode()).digest()[:4], "big")


def compose_prompt(style: Style, cue: str) -> str:
    return ", ".join(part for part in (style.prompt_prefix.strip(), cue, style.prompt_suffix.strip()) if part)
