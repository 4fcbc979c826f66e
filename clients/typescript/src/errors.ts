/**
 * The client's error family. Every failure is a `SoulError`; an error answer of the API is an `ApiError` (a
 * subclass per kind of answer) with the server's `code`, `message` and `field`, the HTTP `status`,
 * `retryAfter` (seconds, from `Retry-After`) and the request id.
 */

export class SoulError extends Error {
  override name = "SoulError";
}

/** No HTTP answer at all: connection refused, DNS, a timeout. */
export class TransportError extends SoulError {
  override name = "TransportError";
}

/** A 2xx answer that is not what the API's document says. */
export class BadResponse extends SoulError {
  override name = "BadResponse";
}

/** A webhook whose signature, timestamp or headers do not verify. */
export class WebhookVerificationError extends SoulError {
  override name = "WebhookVerificationError";
}

/** `wait()` saw the task end failed or canceled; `task` is its last state. */
export class TaskFailed extends SoulError {
  override name = "TaskFailed";
  constructor(message: string, readonly task: unknown) {
    super(message);
  }
}

/** `wait()` gave up before the task ended; the task goes on. */
export class WaitTimeout extends SoulError {
  override name = "WaitTimeout";
}

export class ApiError extends SoulError {
  override name = "ApiError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field: string | null = null,
    readonly retryAfter: number | null = null,
    readonly requestId: string | null = null,
  ) {
    super(message);
  }
}

/** 400, 413, 415, 422: the request is wrong. */
export class BadRequest extends ApiError { override name = "BadRequest"; }
/** 401: no API key was sent. */
export class Unauthorized extends ApiError { override name = "Unauthorized"; }
/** 403: the key is not valid, or its role may not do this. */
export class Forbidden extends ApiError { override name = "Forbidden"; }
/** 404: the soul, variant, task or style does not exist. */
export class NotFound extends ApiError { override name = "NotFound"; }
/** 409: the request contradicts the current state. */
export class Conflict extends ApiError { override name = "Conflict"; }
/** 429: a rate limit or quota is used up; `retryAfter` says when to ask again. */
export class RateLimited extends ApiError { override name = "RateLimited"; }
/** 500: an unexpected failure on the server. */
export class ServerError extends ApiError { override name = "ServerError"; }
/** 502, 503, 504: a backing service is briefly unavailable. */
export class Unavailable extends ApiError { override name = "Unavailable"; }

const BY_STATUS: Record<number, typeof ApiError> = {
  400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: BadRequest,
  415: BadRequest, 422: BadRequest, 429: RateLimited, 500: ServerError, 502: Unavailable, 503: Unavailable,
  504: Unavailable,
};

export function errorClass(status: number): typeof ApiError {
  return BY_STATUS[status] ?? (status >= 500 ? ServerError : BadRequest);
}
