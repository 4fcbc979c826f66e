"""The `ingest` CloudEvent function's logic: requests that other services publish on soul-requests, served by
the same services as the HTTP API, with every outcome (accepted or rejected, with the reason) published on
soul-events.

A message carries the same JSON body as the HTTP endpoint (with `webhook`, `webhook_events_filter` and, for images,
`lane`, as there); its `type` attribute says which (`image`, `selfie`, or
`video` with the fields of /video/generate-from-variant; default `image`) and an optional `request_id`
attribute correlates the outcome (else the message id). Bad input
is answered with a rejection event and acknowledged: retrying cannot fix it. Backend outages raise, so Pub/Sub
redelivers the push (and dead-letters it after the subscription's bounded attempts)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import structlog
from pydantic import BaseModel

from functions.core import errors
from functions.core.tenants import INGEST_TENANT
from functions.core.validation import parse_json
from functions.services.images import ImageAsk

if TYPE_CHECKING:
    from functions.wiring import Services

from schemas import names
from schemas.push import WebhookOptions
from schemas.api import (
    ErrorDetail,
    ImageQueued,
    ImageReady,
    ImageOrder,
    RequestOutcome,
    SelfieRequest,
    VideoAccepted,
    VideoFromVariantQuery,
)

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _image(svc: Services, body: BaseModel) -> ImageReady | ImageQueued:
    assert isinstance(body, ImageOrder)
    return svc.images.request(ImageAsk(soul_id=body.soul_id, cue=body.cue, user_id=body.user_id, lane=body.lane,
                                       tenant=INGEST_TENANT, seed=body.seed, scheduler=body.scheduler))


def _selfie(svc: Services, body: BaseModel) -> ImageReady | ImageQueued:
    assert isinstance(body, SelfieRequest)
    return svc.images.selfie(body, INGEST_TENANT)


def _video(svc: Services, body: BaseModel) -> VideoAccepted:
    assert isinstance(body, VideoFromVariantQuery)
    return svc.videos.from_variant(body.variant_id, body.num_frames, body.generate_gif, body.user_id,
                                   INGEST_TENANT)[1]


REQUEST_TYPES: Mapping[str, tuple[type[BaseModel], Callable[[Services, BaseModel], BaseModel]]] = {
    "image": (ImageOrder, _image),
    "selfie": (SelfieRequest, _selfie),
    "video": (VideoFromVariantQuery, _video),
}


def handle_message(svc: Services, message: Mapping, message_id: str) -> RequestOutcome:
    """Serve one soul-requests message and publish its outcome. Raises only for transient backend failures."""
    attributes = message.get("attributes") or {}
    supplied_id = str(attributes.get("request_id", ""))
    request_id = supplied_id if _REQUEST_ID.match(supplied_id) else message_id
    kind = str(attributes.get("type", "image"))
    try:
        if kind not in REQUEST_TYPES:
            raise errors.InvalidInput(f"unknown request type '{kind}'; valid: {', '.join(REQUEST_TYPES)}",
                                      field="type")
        model, serve = REQUEST_TYPES[kind]
        body = parse_json(model, _decode(message.get("data")))
        if isinstance(body, WebhookOptions) and body.webhook:
            svc.webhooks.check(body.webhook, INGEST_TENANT)
        answer = serve(svc, body)
        if isinstance(body, WebhookOptions):
            svc.webhooks.attach(body, answer, INGEST_TENANT)
        outcome = RequestOutcome(request_id=request_id, type=kind, accepted=True, answer=answer)
    except errors.SoulError as exc:
        if exc.status >= 500:
            raise
        outcome = RequestOutcome(
            request_id=request_id, type=kind, accepted=False,
            error=ErrorDetail(code=exc.code, message=exc.message, field=exc.field),
        )
    svc.publisher.publish_event(
        event_type=names.EVENT_REQUEST_ACCEPTED if outcome.accepted else names.EVENT_REQUEST_REJECTED,
        event_id=request_id,
        data=outcome.model_dump_json().encode(),
    )
    log.info("request_ingested", request_id=request_id, type=kind, accepted=outcome.accepted)
    return outcome


def _decode(data: object) -> bytes:
    if not isinstance(data, str) or not data:
        raise errors.InvalidInput("the message has no data; publish the request body as JSON", field="data")
    if len(data) > MAX_MESSAGE_BYTES * 4 // 3 + 4:
        raise errors.PayloadTooLarge(f"the message exceeds {MAX_MESSAGE_BYTES} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidInput("the message data is not base64", field="data") from None
