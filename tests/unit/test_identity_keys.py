"""Issue 20's keys: a soul's reference set, adapter and scales, a pinned seed and a picked scheduler each make a
new prompt key; a style with none of them (and the new style fields at their defaults) keeps today's key."""

from __future__ import annotations

import pytest

from functions.core import keys
from schemas.documents import Style
from schemas.identity import ReferenceImage, reference_set_version

STYLE = Style(prompt_suffix="soft light", steps=30)


def key(style: Style = STYLE, **identity) -> str:
    parts = keys.identity_fingerprint(**{"reference_set_version": None, "identity_scale": style.identity_scale,
                                         "lora": None, "seed": None, "scheduler": None, **identity})
    return keys.prompt_key(kind="image", soul_id="nova", cue="penguin", style=style, model_tag="tiny-sdxl-v1",
                           identity=parts)


def test_nothing_new_keeps_todays_key_and_fingerprint():
    # The key as issue 20 found it (before identity fields existed), computed from the same payload.
    legacy = keys._digest({"v": keys.KEY_VERSION, "kind": "image", "soul": "nova", "cue": "penguin",
                           "style": keys._digest(STYLE.model_dump(mode="json", exclude={"identity_scale", "scheduler",
                                                                                        "schedulers"}))[:16],
                           "params": {"w": 1024, "h": 1024, "steps": 30, "cfg": 7.0},
                           "model": "tiny-sdxl-v1"})[:32]
    assert key() == legacy
    assert keys.prompt_key(kind="image", soul_id="nova", cue="penguin", style=STYLE, model_tag="tiny-sdxl-v1") == legacy


@pytest.mark.parametrize("change", [
    {"reference_set_version": "a" * 16},
    {"lora": ("nova", "0" * 16, 1.0)},
    {"seed": 42},
    {"scheduler": "ddim"},
])
def test_each_part_of_the_look_makes_a_new_key(change):
    assert key(**change) != key()


def test_versions_and_scales_are_part_of_the_key():
    assert key(reference_set_version="a" * 16) != key(reference_set_version="b" * 16)
    assert key(reference_set_version="a" * 16) != key(Style(prompt_suffix="soft light", identity_scale=0.9),
                                                      reference_set_version="a" * 16)
    assert key(Style(prompt_suffix="soft light", identity_scale=0.9)) != key()  # a changed style field counts
    assert key(lora=("nova", "0" * 16, 1.0)) != key(lora=("nova", "1" * 16, 1.0))
    assert key(lora=("nova", "0" * 16, 1.0)) != key(lora=("nova", "0" * 16, 0.5))
    assert key(seed=1) != key(seed=2)


def test_the_reference_set_version_is_order_free():
    from datetime import datetime, timezone

    def ref(ref_id: str) -> ReferenceImage:
        return ReferenceImage(ref_id=ref_id, object=f"references/nova/{ref_id}.png", width=1, height=1, bytes=1,
                              created_at=datetime.now(timezone.utc))

    a, b = ref("a" * 16), ref("b" * 16)
    assert reference_set_version([a, b]) == reference_set_version([b, a]) != reference_set_version([a])
    assert reference_set_version([]) is None


def test_unknown_schedulers_are_refused_in_a_style():
    with pytest.raises(ValueError, match="Input should be 'euler'"):
        Style(scheduler="fastest")
    with pytest.raises(ValueError, match="Input should be 'euler'"):
        Style(schedulers=("euler", "warp"))
