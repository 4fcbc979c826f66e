"""Media as the API shows it: an image's facts with a signed URL, from a variant document or a job's result (a
listing's URLs are signed together: the signer reuses fresh ones and signs the rest in parallel)."""

from __future__ import annotations

from collections.abc import Sequence

from functions.adapters.signing import SignedUrl, UrlSigner
from schemas.api import Variant
from schemas.documents import VariantDoc
from schemas.jobs import ImageResult


def variant_link(signer: UrlSigner, image: VariantDoc | ImageResult) -> Variant:
    """An image as the API shows it: its facts and a fresh signed URL (from a variant document or a job result)."""
    return _variant(image, signer.sign(image.object))


def variant_links(signer: UrlSigner, images: Sequence[VariantDoc | ImageResult]) -> list[Variant]:
    """Images as the API lists them, their URLs signed in one go (`UrlSigner.sign_many`)."""
    return [_variant(image, signed) for image, signed in zip(images, signer.sign_many([i.object for i in images]))]


def _variant(image: VariantDoc | ImageResult, signed: SignedUrl) -> Variant:
    return Variant(
        variant_id=image.variant_id, pk_id=image.pk, url=signed.url, expires_at=signed.expires_at,
        width=image.width, height=image.height, seed=image.seed, created_at=image.created_at,
    )
