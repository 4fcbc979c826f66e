"""Media as the API shows it: an image's facts with a fresh signed URL, from a variant document or a job's result."""

from __future__ import annotations

from functions.adapters.signing import UrlSigner
from schemas.api import Variant
from schemas.documents import VariantDoc
from schemas.jobs import ImageResult


def variant_link(signer: UrlSigner, image: VariantDoc | ImageResult) -> Variant:
    """An image as the API shows it: its facts and a fresh signed URL (from a variant document or a job result)."""
    signed = signer.sign(image.object)
    return Variant(
        variant_id=image.variant_id, pk_id=image.pk, url=signed.url, expires_at=signed.expires_at,
        width=image.width, height=image.height, seed=image.seed, created_at=image.created_at,
        reproducibility=image.reproducibility,
    )
