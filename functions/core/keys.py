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


# Style fields added after keys were first issued: left at their defaults they stay out of the fingerprint, so
# every style written before them keeps its prompt keys (and its variants).
_LATER_FIELDS = ("identity_scale", "scheduler", "schedulers")


def style_fingerprint(style: Style) -> str:
    dumped = style.model_dump(mode="json")
    defaults = Style().model_dump(mode="json", include=set(_LATER_FIELDS))
    for name in _LATER_FIELDS:
        if dumped[name] == defaults[name]:
            del dumped[name]
        elif isinstance(dumped[name], list):
            dumped[name] = sorted(dumped[name])
    return _digest(dumped)[:16]


def identity_fingerprint(*, reference_set_version: str | None, identity_scale: float,
                         lora: tuple[str, str, float] | None, seed: int | None, scheduler: str | None) -> dict:
    """What of a soul's identity and a request's pins changes pixels; empty (today's keys) when nothing does.
    The identity scale counts only with references (it conditions nothing without them)."""
    parts: dict = {}
    if reference_set_version is not None:
        parts["refs"] = [reference_set_version, round(float(identity_scale), 4)]
    if lora is not None:
        name, version, scale = lora
        parts["lora"] = [name, version, round(float(scale), 4)]
    if seed is not None:
        parts["seed"] = seed
    if scheduler is not None:
        parts["scheduler"] = scheduler
    return parts


def prompt_key(*, kind: str, soul_id: str, cue: str, style: Style, model_tag: str,
               identity: dict | None = None) -> str:
    """`cue` must already be normalized; the caller owns normalization so the key never hides it. `identity`
    (`identity_fingerprint`): references, adapter and pins; when empty the key is what it was before them."""
    payload = {
        "v": KEY_VERSION,
        "kind": kind,
        "soul": soul_id,
        "cue": cue,
        "style": style_fingerprint(style),
        "params": {"w": style.width, "h": style.height, "steps": style.steps, "cfg": style.guidance},
        "model": model_tag,
    }
    if identity:
        payload["identity"] = identity
    return _digest(payload)[:32]


def cue_key(*, kind: str, soul_id: str, cue: str) -> str:
    """A cue of a soul, whatever the style, identity and pins that make its prompt keys (`cue` normalized): what
    the variants-per-cue quota counts, so pinning seeds or schedulers does not make a cue new."""
    return _digest({"v": KEY_VERSION, "kind": kind, "soul": soul_id, "cue": cue})[:32]


def image_job_id(pk: str, variant_index: int, retry: int = 0) -> str:
    base = f"img-{pk}-{variant_index}"
    return base if retry == 0 else f"{base}-r{retry}"


def variant_seed(pk: str, variant_index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{pk}:{variant_index}".encode()).digest()[:4], "big")


def compose_prompt(style: Style, cue: str) -> str:
    return ", ".join(part for part in (style.prompt_prefix.strip(), cue, style.prompt_suffix.strip()) if part)
