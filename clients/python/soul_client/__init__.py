"""soul-client: the Python client of the Soul API. `Client` (sync) and `AsyncClient` (async) on httpx, typed
models generated from the API's OpenAPI document (`soul_client.models`), errors with the server's `code`,
`field` and `retry_after` (`soul_client.errors`), retries that honour `Retry-After`, idempotency keys on every
call that creates work, handles with `wait()` / `progress()` / `cancel()`, and `verify_webhook` for Standard
Webhooks. It imports nothing of the server."""

__version__ = "0.1.0"

from soul_client import errors, models  # noqa: E402
from soul_client._async import AsyncClient  # noqa: E402
from soul_client._client import Client  # noqa: E402
from soul_client._handles import AsyncTaskHandle, TaskHandle  # noqa: E402
from soul_client._operations import OPERATIONS  # noqa: E402
from soul_client._retry import NO_RETRIES, RetryPolicy  # noqa: E402
from soul_client._sse import ServerSentEvent  # noqa: E402
from soul_client.errors import (  # noqa: E402
    ApiError, BadRequest, BadResponse, Conflict, Forbidden, NotFound, RateLimited, ServerError, SoulError,
    TaskFailed, TransportError, Unauthorized, Unavailable, WaitTimeout, WebhookVerificationError,
)
from soul_client.webhooks import sign_webhook, verify_webhook  # noqa: E402

__all__ = [
    "OPERATIONS", "NO_RETRIES", "ApiError", "AsyncClient", "AsyncTaskHandle", "BadRequest", "BadResponse", "Client",
    "Conflict", "Forbidden", "NotFound", "RateLimited", "RetryPolicy", "ServerError", "ServerSentEvent",
    "SoulError", "TaskFailed", "TaskHandle", "TransportError", "Unauthorized", "Unavailable", "WaitTimeout",
    "WebhookVerificationError", "errors", "models", "sign_webhook", "verify_webhook",
]
