"""The functions' error tree. Every error a caller can cause or meet maps to one HTTP status and one
structured body `{"error": {"code", "message", "field"}}`; nothing else reaches the wire."""

from __future__ import annotations


class SoulError(Exception):
    """Base of every error the API answers with; `code` is stable, `message` teaches."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class InvalidInput(SoulError):
    """The request is malformed or out of bounds."""

    status = 400
    code = "invalid_argument"


class Unauthenticated(SoulError):
    """No credentials were sent."""

    status = 401
    code = "unauthenticated"


class PermissionDenied(SoulError):
    """Credentials were sent but are not valid for this service."""

    status = 403
    code = "permission_denied"


class NotFound(SoulError):
    """The named soul, variant, task or style does not exist."""

    status = 404
    code = "not_found"


class MethodNotAllowed(SoulError):
    """The path exists but not with this HTTP method."""

    status = 405
    code = "method_not_allowed"


class Conflict(SoulError):
    """The request contradicts the current state (e.g. canceling a finished task)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(SoulError):
    """The body is larger than the service accepts."""

    status = 413
    code = "payload_too_large"


class RequestTimeout(SoulError):
    """The request did not arrive in time (its body stalled between two reads); the connection is closed."""

    status = 408
    code = "request_timeout"


class UnsupportedMediaType(SoulError):
    """The body is not JSON."""

    status = 415
    code = "unsupported_media_type"


class IdempotencyMismatch(SoulError):
    """An Idempotency-Key was reused with a different request body."""

    status = 422
    code = "idempotency_key_reused"


class ContentRefused(SoulError):
    """The tenant's content policy refuses this request (a blocked term in the cue); nothing was queued."""

    status = 422
    code = "content_policy"


class TooManyRequests(SoulError):
    """A tenant's rate limit or quota is used up; `Retry-After` says when to come back."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, field: str | None = None, code: str | None = None):
        super().__init__(message, field=field, headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})
        if code:
            self.code = code


class Unavailable(SoulError):
    """A backing service (Firestore, Pub/Sub, GCS) could not be reached; retry later."""

    status = 503
    code = "unavailable"


class Internal(SoulError):
    """An unexpected failure; the details are in the logs under the request id, never in the answer."""

    status = 500
    code = "internal"
