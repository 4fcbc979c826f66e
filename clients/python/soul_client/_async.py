"""The asynchronous client: the `Client`'s surface on one httpx.AsyncClient; every operation is a coroutine,
the verbs return an `AsyncTaskHandle`, listings are async iterators over cursors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from soul_client import models
from soul_client._client import _reason
from soul_client._core import DEFAULT_TIMEOUT, default_headers, error_from, is_event_stream, prepare, read_answer, \
    timeout_of
from soul_client._handles import AsyncTaskHandle
from soul_client._operations import OPERATIONS, AsyncOperations
from soul_client._retry import RetryPolicy, parse_retry_after
from soul_client._spec import Operation
from soul_client._sse import AsyncEventStream
from soul_client.errors import BadResponse, TransportError


class AsyncClient(AsyncOperations):
    """`async with AsyncClient(base_url, api_key=...) as soul:`; the options are the `Client`'s."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float | httpx.Timeout | None = None,
                 retry: RetryPolicy | None = None, user_agent: str | None = None,
                 http: httpx.AsyncClient | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._timeout = timeout_of(timeout, DEFAULT_TIMEOUT)
        self._http = http or httpx.AsyncClient()
        self._owns_http = http is None
        self._headers = default_headers(api_key, user_agent)
        self._sleep = sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # ---- verbs ---------------------------------------------------------------------------------------------------

    async def image(self, soul_id: str, cue: str, user_id: str, *, idempotency_key: str | None = None,
                    timeout: float | None = None, **options: Any) -> AsyncTaskHandle:
        order = models.ImageOrder(soul_id=soul_id, cue=cue, user_id=user_id, **options)
        return AsyncTaskHandle(self, await self.image_post(order, idempotency_key=idempotency_key, timeout=timeout))

    async def selfie(self, soul_id: str, city_key: str, mood: str, user_id: str, *,  # type: ignore[override]
                     idempotency_key: str | None = None, timeout: float | None = None,
                     **options: Any) -> AsyncTaskHandle:
        body = models.SelfieRequest(soul_id=soul_id, city_key=city_key, mood=mood, user_id=user_id, **options)
        answer = await AsyncOperations.selfie(self, body, idempotency_key=idempotency_key, timeout=timeout)
        return AsyncTaskHandle(self, answer)

    async def animate(self, variant_id: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                      **options: Any) -> AsyncTaskHandle:
        answer = await self.video_from_variant(variant_id=variant_id, idempotency_key=idempotency_key,
                                               timeout=timeout, **options)
        return AsyncTaskHandle(self, answer)

    async def handle(self, task_id: str) -> AsyncTaskHandle:
        return AsyncTaskHandle(self, await self.task_get(task_id))

    def tasks(self, *, limit: int | None = None, page_size: int = 100, **filters: Any) -> AsyncIterator[models.Task]:
        return self.paginate("task_list", limit=limit, page_size=page_size, **filters)

    async def paginate(self, operation_id: str, *, limit: int | None = None, page_size: int = 100,
                       **arguments: Any) -> AsyncIterator[Any]:
        method = getattr(self, operation_id)
        cursor, seen = None, 0
        while limit is None or seen < limit:
            size = page_size if limit is None else min(page_size, limit - seen)
            page = await method(page_size=size, cursor=cursor, **arguments)
            for item in page.items[: None if limit is None else limit - seen]:
                seen += 1
                yield item
            if not page.items or page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    async def call(self, operation_id: str, *, path: dict | None = None, query: dict | None = None,
                   body: Any = None, idempotency_key: str | None = None, timeout: float | None = None) -> Any:
        return await self._operate(OPERATIONS[operation_id], path or {}, query or {}, body, timeout=timeout,
                                   idempotency_key=idempotency_key)

    # ---- transport -----------------------------------------------------------------------------------------------

    async def _operate(self, op: Operation, path: dict, query: dict, body: Any, *, timeout: float | None = None,
                       idempotency_key: str | None = None) -> Any:
        prepared = prepare(op, path, query, body, idempotency_key=idempotency_key)
        stream = "<stream>" in op.responses.values()
        request = self._http.build_request(prepared.method, self.base_url + prepared.url, params=prepared.params,
                                           json=prepared.json, content=prepared.content,
                                           headers={**self._headers, **prepared.headers},
                                           timeout=timeout_of(timeout, self._timeout))
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.send(request, stream=stream, follow_redirects=False)
            except httpx.TransportError as exc:
                delay = self.retry.delay(attempt, status=None, retry_after=None, idempotent=prepared.idempotent)
                if delay is None:
                    raise TransportError(f"{op.method} {self.base_url}{prepared.url}: {_reason(exc)}") from exc
                await self._sleep(delay)
                continue
            if response.status_code < 400:
                if stream:
                    if not is_event_stream(response):
                        await response.aclose()
                        raise BadResponse(f"{op.method} {prepared.url} answered without an event stream")
                    return AsyncEventStream(response)
                return read_answer(op, response)
            if stream:
                await response.aread()
                await response.aclose()
            delay = self.retry.delay(attempt, status=response.status_code, idempotent=prepared.idempotent,
                                     retry_after=parse_retry_after(response.headers.get("Retry-After")))
            if delay is None:
                raise error_from(response)
            await self._sleep(delay)
