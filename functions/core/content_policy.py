"""Content policy rules, pure: what a tenant's caller gets of an image given the checker's verdict (`delivery`), and
the prompt-side screen of a normalized cue against a tenant's blocked terms (`blocked_term`).

The runner scores every image and records the verdict on the variant, whatever anybody's policy: variants are
shared between tenants (an identical request of another tenant is a dedup hit on the same variant), so the verdict
is a fact about the image, and each delivery applies the *asking* tenant's policy:

| policy     | not flagged | flagged                                                            |
|------------|-------------|--------------------------------------------------------------------|
| `off`      | original    | original, no safety facts                                          |
| `flag`     | original    | original + `safety {flagged, score, model}`                        |
| `blur`     | original    | the blurred rendition (+ `original_url` for admin keys)            |
| `withhold` | original    | nothing: no URL; a task result says `withheld` with the reason     |

An image without a verdict (rendered before the checker existed) counts as not flagged."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import Enum

from functions.core.normalize import normalize_cue
from schemas.safety import ContentPolicy, SafetyVerdict


class Delivery(Enum):
    ORIGINAL = "original"
    BLURRED = "blurred"
    WITHHELD = "withheld"


@dataclass(frozen=True)
class Viewer:
    """Who is looking, as the content policy sees it: the tenant's policy and whether the key is an admin's."""

    policy: ContentPolicy = ContentPolicy.FLAG
    admin: bool = False


def delivery(viewer: Viewer, verdict: SafetyVerdict | None) -> Delivery:
    if verdict is None or not verdict.flagged:
        return Delivery.ORIGINAL
    policy = ContentPolicy(viewer.policy)
    if policy is ContentPolicy.WITHHOLD:
        return Delivery.WITHHELD
    if policy is ContentPolicy.BLUR and verdict.blurred_object:
        return Delivery.BLURRED
    if policy is ContentPolicy.BLUR:
        return Delivery.WITHHELD  # flagged but no blurred rendition recorded: never fall back to the original
    return Delivery.ORIGINAL


def deliverable(viewer: Viewer, verdict: SafetyVerdict | None) -> bool:
    """Whether this viewer may get any URL of the image (the dedup choice skips those it may not)."""
    return delivery(viewer, verdict) is not Delivery.WITHHELD


def shows_safety(viewer: Viewer) -> bool:
    return ContentPolicy(viewer.policy) in (ContentPolicy.FLAG, ContentPolicy.BLUR)


def sees_flagged_originals(viewer: Viewer) -> bool:
    """Policies under which a flagged image's own pixels reach the caller (`off`, `flag`)."""
    return ContentPolicy(viewer.policy) in (ContentPolicy.OFF, ContentPolicy.FLAG)


def shows_previews(viewer: Viewer) -> bool:
    """Previews come before the checker's verdict: only policies that would show a flagged original see them."""
    return sees_flagged_originals(viewer)


def withheld_reason(verdict: SafetyVerdict) -> str:
    return (f"the image was flagged by the safety checker ({verdict.model}, score {verdict.score:g} above "
            f"{verdict.threshold:g}) and this tenant's content policy is 'withhold'")


def normalize_terms(terms: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Blocked terms in the cue's own normal form (the same rules as normalize_cue), so "Blood!" blocks "blood",
    and in their screening form (`screening_form`), computed once here rather than per request."""
    out = []
    for term in terms:
        try:
            normal = screening_form(normalize_cue(term))
        except ValueError:
            continue  # a term that normalizes to nothing blocks nothing
        if normal and normal not in out:
            out.append(normal)
    return tuple(out)


# Letters of other scripts drawn like Latin ones (Unicode's confusables, the lowercase letters a cue can hide
# behind): screened as the Latin letter, so Cyrillic "gоre" is "gore". Only for screening: keys keep the cue.
_LOOKALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ɡ": "g", "ɑ": "a",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "ω": "w", "ı": "i", "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ŧ": "t", "ß": "ss", "æ": "ae", "œ": "oe",
})
# Endings a blocked word still matches with: plurals, and the possessive ("penguin's" normalizes to "penguins").
_ENDINGS = ("", "s", "es")


def screening_form(text: str) -> str:
    """`text` (normalized) as the screen compares it: accents and other marks dropped ("pénguin", Turkish
    "PENGUİN"), look-alike letters of other scripts read as Latin."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return unicodedata.normalize("NFKC", bare.translate(_LOOKALIKES))


def blocked_term(normalized_cue: str, terms: tuple[str, ...]) -> str | None:
    """The first blocked term (as `normalize_terms` gives it) the cue contains as whole words, or None, the cue
    compared in its screening form; a word matches a term's word alone or with a plural or possessive ending. "gore"
    blocks "gore scene", "góre" and "gores" but not "gorey" or "algorithm"; a term of several words matches
    those words in a row."""
    words = screening_form(normalized_cue).split(" ")
    for term in terms:
        needle = term.split(" ")
        for start in range(len(words) - len(needle) + 1):
            if all(_matches(word, part) for word, part in zip(words[start:start + len(needle)], needle)):
                return term
    return None


def _matches(word: str, term_word: str) -> bool:
    return any(word == term_word + ending for ending in _ENDINGS)
