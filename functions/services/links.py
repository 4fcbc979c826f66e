"""Media as the API shows it: an image's facts with a fresh signed URL, from a variant document or a job's result, as
the asking viewer's content policy lets it see the image (functions/core/content_policy.py): the original, the
blurred rendition, or nothing (`withheld_view` then says why)."""

from __future__ import annotations

from functions.adapters.signing import UrlSigner
from functions.core import content_policy as rules
from functions.core.content_policy import Delivery, Viewer
from schemas.api import Variant
from schemas.documents import VariantDoc
from schemas.jobs import ImageResult
from schemas.safety import Safety, Withheld


def variant_link(signer: UrlSigner, image: VariantDoc | ImageResult, viewer: Viewer = Viewer()) -> Variant | None:
    """The image as this viewer may see it, with a fresh signed URL; None when its policy withholds it."""
    verdict = image.safety
    how = rules.delivery(viewer, verdict)
    if how is Delivery.WITHHELD:
        return None
    blurred = how is Delivery.BLURRED
    signed = signer.sign(verdict.blurred_object if blurred else image.object)
    safety = None
    if verdict is not None and rules.shows_safety(viewer):
        safety = Safety(flagged=verdict.flagged, score=verdict.score, model=verdict.model, blurred=blurred)
    original = signer.sign(image.object).url if blurred and viewer.admin else None
    return Variant(
        variant_id=image.variant_id, pk_id=image.pk, url=signed.url, expires_at=signed.expires_at,
        width=image.width, height=image.height, seed=image.seed, created_at=image.created_at, safety=safety,
        original_url=original,
    )


def withheld_view(image: VariantDoc | ImageResult, viewer: Viewer) -> Withheld | None:
    """What a withheld result says instead of a URL; None when the viewer may see the image."""
    if rules.delivery(viewer, image.safety) is not Delivery.WITHHELD:
        return None
    return Withheld(variant_id=image.variant_id, policy=viewer.policy, reason=rules.withheld_reason(image.safety))
