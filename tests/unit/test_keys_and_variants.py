"""Prompt keys, job names, seeds and per-user variant choice."""

import re
from dataclasses import dataclass

import pytest

from functions.core import keys
from functions.core.variants import choose_unseen, next_variant_index
from schemas.documents import Style
from schemas.ids import JOB_ID_PATTERN, PK_PATTERN


STYLE = Style(prompt_prefix="portrait of nova", negative_prompt="blurry")


def pk(**overrides):
    args = {"kind": "image", "soul_id": "nova", "cue": "penguin", "style": STYLE, "model_tag": "tiny-sdxl-v1"}
    args.update(overrides)
    return keys.prompt_key(**args)


def test_prompt_key_is_deterministic_and_well_formed():
    assert pk() == pk()
    assert re.fullmatch(PK_PATTERN, pk())


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "selfie"},
        {"soul_id": "atlas"},
        {"cue": "penguins"},
        {"style": STYLE.model_copy(update={"prompt_suffix": "oil painting"})},
        {"style": STYLE.model_copy(update={"steps": 31})},
        {"style": STYLE.model_copy(update={"width": 768})},
        {"model_tag": "sdxl-base-1.0"},
    ],
)
def test_anything_that_changes_pixels_changes_the_key(change):
    assert pk(**change) != pk()


def test_style_fingerprint_tracks_every_field():
    assert keys.style_fingerprint(STYLE) == keys.style_fingerprint(Style(**STYLE.model_dump()))
    assert keys.style_fingerprint(STYLE) != keys.style_fingerprint(STYLE.model_copy(update={"guidance": 6.0}))


def test_job_ids_name_the_work():
    key = pk()
    assert keys.image_job_id(key, 0) == keys.image_job_id(key, 0)
    assert keys.image_job_id(key, 0) != keys.image_job_id(key, 1)
    assert keys.image_job_id(key, 0, retry=1).endswith("-r1")
    for job_id in (keys.image_job_id(key, 0), keys.image_job_id(key, 12, retry=3)):
        assert re.fullmatch(JOB_ID_PATTERN, job_id)


def test_seeds_are_stable_and_differ_per_variant():
    key = pk()
    assert keys.variant_seed(key, 0) == keys.variant_seed(key, 0)
    assert len({keys.variant_seed(key, n) for n in range(50)}) == 50
    assert all(0 <= keys.variant_seed(key, n) < 2**32 for n in range(50))


def test_compose_prompt_skips_empty_parts():
    assert keys.compose_prompt(Style(prompt_prefix="a", prompt_suffix="b"), "cue") == "a, cue, b"
    assert keys.compose_prompt(Style(), "cue") == "cue"


@dataclass(frozen=True)
class V:
    variant_id: str
    variant_index: int


def test_choose_unseen_gives_the_oldest_unseen():
    variants = [V("c", 2), V("a", 0), V("b", 1)]
    assert choose_unseen(variants, set()) == V("a", 0)
    assert choose_unseen(variants, {"a"}) == V("b", 1)
    assert choose_unseen(variants, {"a", "b"}) == V("c", 2)
    assert choose_unseen(variants, {"a", "b", "c"}) is None
    assert choose_unseen([], set()) is None


def test_never_a_seen_variant_while_an_unseen_exists():
    variants = [V(str(i), i) for i in range(6)]
    for mask in range(2**6):
        seen = {str(i) for i in range(6) if mask >> i & 1}
        chosen = choose_unseen(variants, seen)
        if len(seen) < 6:
            assert chosen is not None and chosen.variant_id not in seen
        else:
            assert chosen is None


def test_next_variant_index():
    assert next_variant_index([]) == 0
    assert next_variant_index([V("a", 0), V("b", 1)]) == 2
    assert next_variant_index([V("a", 3)]) == 4
