"""Cue normalization: the examples the product promises, and the properties that make dedup sound."""

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.core.normalize import EmptyCueError, is_invisible, normalize_cue


@pytest.mark.parametrize(
    ("cue", "expected"),
    [
        ("penguin", "penguin"),
        (" Penguin! ", "penguin"),
        ("PENGUIN", "penguin"),
        ("ｐｅｎｇｕｉｎ", "penguin"),  # full-width forms fold by NFKC
        ("pen\u200bguin", "penguin"),  # zero-width space
        ("\ufeffpenguin\u200d", "penguin"),  # BOM, zero-width joiner
        ("selfie in Paris,   happy", "selfie in paris happy"),
        ("selfie\tin\nParis", "selfie in paris"),
        ("don't stop", "dont stop"),
        ("don’t stop", "dont stop"),
        ("Straße", "strasse"),  # case folding, not lower()
        ("cafe\u0301", "café"),  # composed
        ("🐧 penguin", "🐧 penguin"),  # symbols are meaning, kept
        ("a\x00b\x07c", "a b c"),  # control characters break words, never survive
    ],
)
def test_examples(cue, expected):
    assert normalize_cue(cue) == expected


@pytest.mark.parametrize("cue", ["", "   ", "!!!", "\u200b\u200c", "...,;", "\x00\x01"])
def test_nothing_left_is_an_error(cue):
    with pytest.raises(EmptyCueError):
        normalize_cue(cue)


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=80))
def test_idempotent(cue):
    try:
        once = normalize_cue(cue)
    except EmptyCueError:
        return
    assert normalize_cue(once) == once


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=80))
def test_output_is_clean(cue):
    try:
        out = normalize_cue(cue)
    except EmptyCueError:
        return
    assert out == out.strip() and "  " not in out
    assert unicodedata.is_normalized("NFKC", out)
    assert out == out.casefold() or unicodedata.normalize("NFKC", out.casefold()) == out
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs") for ch in out)
    # Punctuation is gone but for the marks that change meaning (#, %, &, @ and a minus sign before a number).
    assert not any(unicodedata.category(ch).startswith("P") and ch not in "#%&@-" for ch in out)
    assert not any(is_invisible(ch) for ch in out)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(categories=("L", "N")), min_size=1, max_size=30),
       st.sampled_from(["", " ", "!", "  ?", "\u200b", "\t", "."]))
def test_decoration_does_not_change_meaning(word, decoration):
    try:
        plain = normalize_cue(word)
    except EmptyCueError:
        return
    assert normalize_cue(decoration + word.upper() + decoration) == normalize_cue(word.upper())
    assert normalize_cue(decoration + word + decoration) == plain


# ---- issue 8: invisible characters made new prompt keys, meaningful punctuation merged different cues -------------


@pytest.mark.parametrize("invisible", ["\ufe0f", "\u034f", "\u3164", "\u2800", "\u115f", "\ufe00", "\u00ad",
                                       "\U000e0041", "\u180b", "\uffa0"])
def test_invisible_characters_never_make_a_new_prompt_key(invisible):
    assert normalize_cue(f"pen{invisible}guin") == normalize_cue(f"penguin{invisible}") == "penguin"
    assert normalize_cue(f"{invisible}penguin") == "penguin"


@pytest.mark.parametrize(("one", "other"), [("C#", "C"), ("-5 degrees", "5 degrees"), ("100%", "100"),
                                            ("r&b", "r b"), ("c++", "c"), ("\u22125 degrees", "5 degrees")])
def test_cues_that_differ_in_meaning_stay_apart(one, other):
    assert normalize_cue(one) != normalize_cue(other)


def test_a_hyphen_inside_words_still_separates_and_a_sign_survives_decoration():
    assert normalize_cue("ice-cream") == normalize_cue("ice cream")
    assert normalize_cue(" -5\u200b degrees!") == "-5 degrees"
    assert normalize_cue("-\u200b5") == "-5"
