"""Cue normalization: the pure function that decides when two cues mean the same prompt.

" Penguin! ", "penguin" and "ｐｅｎｇｕｉｎ" normalize alike: Unicode NFKC, case folding, zero-width and control
characters removed, punctuation turned into word breaks, whitespace collapsed. The result is idempotent
(normalizing a normalized cue changes nothing), which the property tests check."""

from __future__ import annotations

import unicodedata

# Apostrophes join the word they sit in ("don't" -> "dont"); other punctuation separates words.
_APOSTROPHES = frozenset("'\u2018\u2019\u02bc\uff07`")
_MAX_PASSES = 4


class EmptyCueError(ValueError):
    """The cue has no characters left after normalization (only punctuation, spaces or invisible marks)."""


def _map_char(ch: str) -> str:
    if ch in _APOSTROPHES:
        return ""
    category = unicodedata.category(ch)
    if category == "Cf":  # zero-width space/joiners, BOM, bidi marks: invisible, never meaningful in a cue
        return ""
    if category[0] in ("P", "Z") or category == "Cc" or ch.isspace():
        return " "
    if category in ("Co", "Cs", "Cn"):  # private use, lone surrogates, unassigned: nothing to draw from
        return ""
    return ch


def _normalize_once(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = unicodedata.normalize("NFKC", text.casefold())
    text = "".join(_map_char(ch) for ch in text)
    # Removing a character can bring a combining mark next to a new base: compose again.
    text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


def normalize_cue(cue: str) -> str:
    """Return the canonical form of `cue`; raise EmptyCueError when nothing meaningful is left."""
    text = cue
    for _ in range(_MAX_PASSES):
        again = _normalize_once(text)
        if again == text:
            break
        text = again
    if not text:
        raise EmptyCueError("cue has no letters, digits or symbols after normalization")
    return text
