"""Media as the API shows it: an image's facts with a signed URL, from a variant document or a job's result, as
the asking viewer's content policy lets it see the image (functions/core/content_policy.py): the original, the
blurred rendition, or nothing (`withheld_view` then says why). A listing's URLs are signed together
(`variant_links`): the signer reuses fresh ones and signs the rest in parallel."""

from __future__ import annotations

from collections.abc import Sequence

from functions.adapters.signing import SignedUrl, UrlSigner
from functions.core import content_policy as rules
from functions.core.content_policy import Delivery, Viewer
from schemas.api import Variant
from schemas.documents import VariantDoc
from schemas.jobs import ImageResult
from schemas.safety import Safety, Withheld


def variant_link(signer: UrlSigner, image: VariantDoc | ImageResult, viewer: Viewer = Viewer()) -> Variant | None:
    """The image as this viewer may see it, with a signed URL; None when its policy withholds it."""
    return variant_links(signer, [image], viewer)[0]


def variant_links(signer: UrlSigner, images: Sequence[VariantDoc | ImageResult],
                  viewer: Viewer = Viewer()) -> list[Variant | None]:
    """Each image as this viewer may see it (None where withheld), every URL signed in one `sign_many`."""
    plans = [_plan(image, viewer) for image in images]
    wanted = [obj for plan in plans if plan is not None for obj in plan[1:] if obj is not None]
    signed = dict(zip(wanted, signer.sign_many(wanted)))
    return [None if plan is None else _variant(image, viewer, plan[0], signed[plan[1]],
                                                signed[plan[2]] if plan[2] is not None else None)
            for image, plan in zip(images, plans)]


def _plan(image: VariantDoc | ImageResult, viewer: Viewer) -> tuple[bool, str, str | None] | None:
    """(blurred, the object to sign, the original's object for an admin looking at a blurred one), or None."""
    how = rules.delivery(viewer, image.safety)
    if how is Delivery.WITHHELD:
        return None
    blurred = how is Delivery.BLURRED
    shown = image.safety.blurred_object if blurred else image.object
    return blurred, shown, image.object if blurred and viewer.admin else None


def _variant(image: VariantDoc | ImageResult, viewer: Viewer, blurred: bool, signed: SignedUrl,
             original: SignedUrl | None) -> Variant:
    verdict = image.safety
    safety = None
    if verdict is not None and rules.shows_safety(viewer):
        safety = Safety(flagged=verdict.flagged, score=verdict.score, model=verdict.model, blurred=blurred)
    return Variant(
        variant_id=image.variant_id, pk_id=image.pk, url=signed.url, expires_at=signed.expires_at,
        width=image.width, height=image.height, seed=image.seed, created_at=image.created_at, safety=safety,
        original_url=original.url if original is not None else None, reproducibility=image.reproducibility,
    )


def withheld_view(image: VariantDoc | ImageResult, viewer: Viewer) -> Withheld | None:
    """What a withheld result says instead of a URL; None when the viewer may see the image."""
    if rules.delivery(viewer, image.safety) is not Delivery.WITHHELD:
        return None
    return Withheld(variant_id=image.variant_id, policy=viewer.policy, reason=rules.withheld_reason(image.safety))
