"""The `ingest` CloudEvent function's logic: requests that other services publish on soul-requests, served by
the same services as the HTTP API, with every outcome (accepted or rejected, with the reason) published on
soul-events.

A message carries the same JSON body as the HTTP endpoint (with `webhook`, `webhook_events_filter` and, for images,
`lane`, as there); its `type` attribute says which (`image`, `selfie`, or
`video` with the fields of /video/generate-from-variant; default `image`) and an optional `request_id`
attribute correlates the outcome (else the message id). A `request_id` is an idempotency key, as
`Idempotency-Key` is over HTTP: the same id with the same body is served once and its answer replayed (its
outcome event is the same CloudEvent, `ce-id` = the request id, which consumers drop as a duplicate); the same id
with another body is rejected (`idempotency_key_reused`, under an event id of its own so that consumers do not
drop it as the first answer's duplicate). Bad input is answered with a rejection event and acknowledged:
retrying cannot fix it. Backend outages raise, so Pub/Sub redelivers the push (and dead-letters it after the
subscription's bounded attempts)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import structlog
from pydantic import BaseModel

from functions.core import errors
from functions.core.tenants import INGEST_TENANT
from functions.core.validation import parse_json
from functions.services.idempotency import StoredReply, request_fingerprint
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
# The idempotency scope of ingest's request ids: apart from every HTTP key of the same tenant.
IDEMPOTENCY_SCOPE = f"ingest:{INGEST_TENANT}"


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
    event_id = request_id
    try:
        if kind not in REQUEST_TYPES:
            raise errors.InvalidInput(f"unknown request type '{kind}'; valid: {', '.join(REQUEST_TYPES)}",
                                      field="type")
        model, serve = REQUEST_TYPES[kind]
        body = parse_json(model, _decode(message.get("data")))
        if isinstance(body, WebhookOptions) and body.webhook:
            svc.webhooks.check(body.webhook, INGEST_TENANT)

        def run() -> StoredReply:
            answer = serve(svc, body)
            if isinstance(body, WebhookOptions):
                svc.webhooks.attach(body, answer, INGEST_TENANT)
            return StoredReply(200, answer.model_dump_json())

        if request_id == supplied_id:  # the publisher's own id: served once per body
            fingerprint = request_fingerprint("PUBLISH", kind, {}, body.model_dump(mode="json"))
            try:
                stored = svc.idempotency.run_once(request_id, IDEMPOTENCY_SCOPE, fingerprint, run)
            except errors.IdempotencyMismatch:
                event_id = f"{request_id}~{message_id}"
                raise errors.IdempotencyMismatch(f"request_id '{request_id}' was used with a different request",
                                                 field="request_id") from None
            except errors.Conflict as exc:
                if exc.field != "Idempotency-Key":
                    raise
                # The same request is being served by another push: answer once it has been, on redelivery.
                raise errors.Unavailable("the same request_id is being served; retry") from None
        else:
            stored = run()
        outcome = RequestOutcome(request_id=request_id, type=kind, accepted=True, answer=json.loads(stored.body))
    except errors.SoulError as exc:
        if exc.status >= 500:
            raise
        outcome = RequestOutcome(
            request_id=request_id, type=kind, accepted=False,
            error=ErrorDetail(code=exc.code, message=exc.message, field=exc.field),
        )
    svc.publisher.publish_event(
        event_type=names.EVENT_REQUEST_ACCEPTED if outcome.accepted else names.EVENT_REQUEST_REJECTED,
        event_id=event_id,
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
