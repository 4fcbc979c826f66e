"""Per-user variant choice: which existing variant of a prompt key this user gets, or that a new one is needed."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, TypeVar


class _Indexed(Protocol):
    @property
    def variant_id(self) -> str: ...

    @property
    def variant_index(self) -> int: ...


V = TypeVar("V", bound=_Indexed)


def choose_unseen(variants: Sequence[V], seen_ids: Collection[str]) -> V | None:
    """The oldest variant the user has not marked seen, or None when every variant is seen (or none exists).

    Oldest first keeps delivery stable: the same user asking twice gets the same picture until marking it seen."""
    for variant in sorted(variants, key=lambda v: v.variant_index):
        if variant.variant_id not in seen_ids:
            return variant
    return None


def next_variant_index(variants: Sequence[V]) -> int:
    """Index of the variant to make next: one past the highest that exists."""
    return max((v.variant_index for v in variants), default=-1) + 1


def first_unseen_id(variant_ids: Sequence[str], seen_ids: Collection[str]) -> str | None:
    """The first variant id (in the index's creation order) the user has not marked seen; the constant-read path
    of `choose_unseen`, over `prompts/{pk}.variant_ids` instead of the variant documents."""
    for variant_id in variant_ids:
        if variant_id not in seen_ids:
            return variant_id
    return None


def next_index_of(variant_indices: Collection[int], variant_ids: Sequence[str]) -> int:
    """Index of the variant to make next from the prompt index: one past the highest recorded index (an index
    written before indices were recorded counts its ids instead)."""
    return max(max(variant_indices, default=-1) + 1, len(variant_ids))
