"""Cue normalization: the pure function that decides when two cues mean the same prompt.

" Penguin! ", "penguin" and "ｐｅｎｇｕｉｎ" normalize alike: Unicode NFKC, case folding, invisible characters
removed (format characters, every default-ignorable code point such as variation selectors and the combining
grapheme joiner, Hangul fillers, the braille blank), control characters and punctuation turned into word breaks,
whitespace collapsed. Punctuation that changes meaning is kept: `#`, `%`, `&`, `@`, `+` and a minus sign before
a number (`C#` is not `C`, `-5 degrees` is not `5 degrees`). The result is idempotent (normalizing a normalized
cue changes nothing), which the property tests check. Changing these rules changes prompt keys (KEY_VERSION in
keys.py names the rule set): new keys simply start new variant lists."""

from __future__ import annotations

import unicodedata

from schemas.api import CUE_MAX_CHARS

# Apostrophes join the word they sit in ("don't" -> "dont"); other punctuation separates words.
_APOSTROPHES = frozenset("'\u2018\u2019\u02bc\uff07`")
_MAX_PASSES = 4
# Punctuation that carries meaning in a cue ("c#", "100%", "r&b", "@home", "c++").
_MEANINGFUL = frozenset("#%&@+")
_MINUS = frozenset("-\u2212\u2010\u2011\u2012\u2013\ufe63\uff0d")
# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties) outside category Cf, plus blank-looking letters
# and symbols: Hangul fillers and the braille blank render as nothing and would make a new prompt key each.
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x2800, 0x2800), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)


def is_invisible(ch: str) -> bool:
    code = ord(ch)
    return unicodedata.category(ch) == "Cf" or any(lo <= code <= hi for lo, hi in _INVISIBLE_RANGES)


# A cue's bound holds on what is keyed and rendered, not only on what was sent: NFKC expands some characters
# (U+FDFA is 18 characters, U+3300 is 4), so 28 characters sent can be 504 normalized.
MAX_NORMALIZED_CHARS = CUE_MAX_CHARS


class CueError(ValueError):
    """The cue cannot be used; the message says why (a 400 on the `cue` field)."""


class EmptyCueError(CueError):
    """The cue has no characters left after normalization (only punctuation, spaces or invisible marks)."""


class CueTooLongError(CueError):
    """The normalized cue is longer than the bound (compatibility characters expand under NFKC)."""


def _map_char(ch: str, before: str, after: str) -> str:
    if ch in _APOSTROPHES:
        return ""
    if is_invisible(ch):  # zero-width, joiners, BOM, bidi marks, variation selectors, fillers: never meaningful
        return ""
    if ch in _MEANINGFUL:
        return ch
    if ch in _MINUS:  # a sign ("-5", " -5") stays; a hyphen inside a word ("ice-cream") separates
        return "-" if after.isdigit() and not before.isalnum() else " "
    category = unicodedata.category(ch)
    if category[0] in ("P", "Z") or category == "Cc" or ch.isspace():
        return " "
    if category in ("Co", "Cs", "Cn"):  # private use, lone surrogates, unassigned: nothing to draw from
        return ""
    return ch


def _normalize_once(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = unicodedata.normalize("NFKC", text.casefold())
    text = "".join(ch for ch in text if not is_invisible(ch))  # first, so context below is what one sees
    text = "".join(_map_char(ch, text[i - 1] if i else "", text[i + 1:i + 2]) for i, ch in enumerate(text))
    # Removing a character can bring a combining mark next to a new base: compose again.
    text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


def normalize_cue(cue: str) -> str:
    """Return the canonical form of `cue`; raise EmptyCueError when nothing meaningful is left, CueTooLongError
    when the normalized form is over the bound (before and after every pass: expansion is bounded too)."""
    text = cue
    for _ in range(_MAX_PASSES):
        if len(text) > 4 * MAX_NORMALIZED_CHARS:  # never normalize an unbounded expansion further
            break
        again = _normalize_once(text)
        if again == text:
            break
        text = again
    if len(text) > MAX_NORMALIZED_CHARS:
        raise CueTooLongError(f"cue is {len(text)} characters once normalized (compatibility characters expand); "
                              f"at most {MAX_NORMALIZED_CHARS}")
    if not text:
        raise EmptyCueError("cue has no letters, digits or symbols after normalization")
    return text
