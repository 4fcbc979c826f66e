"""The content-policy contract: the policies a tenant can choose (`ContentPolicy`), the safety checker's verdict on
one rendered image (`SafetyVerdict`, recorded on the variant and the job result by the runner, applied per asking
tenant by the functions), and what a withheld result says (`Withheld`). Both deployables import it."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from schemas._base import Contract, Reply


class ContentPolicy(StrEnum):
    """What a tenant's users get of an image the checker flagged (every image is scored, whatever the policy)."""

    OFF = "off"  # the original, no safety facts shown
    FLAG = "flag"  # the original, with `safety {flagged, score, model}` (the default)
    BLUR = "blur"  # a blurred rendition when flagged; the original only for admin keys
    WITHHOLD = "withhold"  # no signed URL of a flagged image at all: the task succeeds with a `withheld` result


DEFAULT_POLICY = ContentPolicy.FLAG


class SafetyVerdict(Contract):
    """The checker's verdict on one image, written by the runner with the variant (it never changes after)."""

    flagged: bool
    score: float = Field(description="The largest concept margin the checker measured (cosine similarity minus "
                                     "the concept's threshold); flagged when above `threshold`.")
    threshold: float
    model: str = Field(description="The checker that scored it: a local model's folder name, or `tiny-safety`.")
    # The blurred rendition, uploaded before the original whenever the image is flagged (policy `blur` serves it).
    blurred_object: str | None = None


class Safety(Reply):
    """The checker's verdict as the API shows it (policies `flag` and `blur`)."""

    flagged: bool
    score: float
    model: str
    blurred: bool = Field(default=False, description="The URL serves the blurred rendition (policy `blur`).")


class Withheld(Reply):
    """A result the asking tenant's policy does not let it see: no URL, the reason instead."""

    variant_id: str
    policy: ContentPolicy
    reason: str
