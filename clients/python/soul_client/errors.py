"""The client's error family. Every failure is a `SoulError`; an error answer of the API is an `ApiError` (a
subclass per kind of answer) carrying the server's `{"error": {"code", "message", "field"}}`, the HTTP status,
`retry_after` (seconds, from `Retry-After`) and the request id. Which statuses are retried is decided in
`_retry.py`, not here."""

from __future__ import annotations

from collections.abc import Mapping


class SoulError(Exception):
    """Base of every error this client raises."""


class TransportError(SoulError):
    """No HTTP answer at all: connection refused, DNS, a timeout."""


class BadResponse(SoulError):
    """A 2xx answer whose body is not what the API's document says (a wrong base URL, or a client too old)."""


class WebhookVerificationError(SoulError):
    """A webhook whose signature, timestamp or headers do not verify: do not trust its body."""


class TaskFailed(SoulError):
    """`wait()` saw the task end failed or canceled; `task` is its last state."""

    def __init__(self, message: str, task: object):
        super().__init__(message)
        self.task = task


class WaitTimeout(SoulError):
    """`wait()` gave up before the task ended; the task itself goes on."""


class ApiError(SoulError):
    """The API answered 4xx/5xx."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after: float | None = None, request_id: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (field: {self.field})" if self.field else ""
        return f"{self.message}{where} [{self.code}, HTTP {self.status}]"


class BadRequest(ApiError):
    """400, 413, 415, 422: the request is wrong; sending it again will not help."""


class Unauthorized(ApiError):
    """401: no API key was sent."""


class Forbidden(ApiError):
    """403: the key is not valid, or its role may not do this."""


class NotFound(ApiError):
    """404: the soul, variant, task or style does not exist."""


class Conflict(ApiError):
    """409: the request contradicts the current state (e.g. canceling a finished task)."""


class RateLimited(ApiError):
    """429: the tenant's rate limit or a quota is used up; `retry_after` says when to ask again."""


class ServerError(ApiError):
    """500: an unexpected failure on the server (look it up by `request_id`)."""


class Unavailable(ApiError):
    """502, 503, 504: a backing service is briefly unavailable."""


_BY_STATUS: Mapping[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: BadRequest,
    415: BadRequest, 422: BadRequest, 429: RateLimited, 500: ServerError, 502: Unavailable, 503: Unavailable,
    504: Unavailable,
}


def error_class(status: int) -> type[ApiError]:
    return _BY_STATUS.get(status) or (ServerError if status >= 500 else BadRequest if status >= 400 else ApiError)
