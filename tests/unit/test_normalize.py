"""Cue normalization: the examples the product promises, and the properties that make dedup sound."""

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.normalize import EmptyCueError, normalize_cue


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
    assert not any(unicodedata.category(ch).startswith("P") for ch in out)


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
