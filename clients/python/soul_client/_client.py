"""The synchronous client: one httpx.Client, one typed method per operation (generated, `_operations.py`), the
verbs that create work (`image`, `selfie`, `animate`) returning a `TaskHandle`, and listings as iterators over
cursors. Every call has a timeout; idempotent calls are retried by the `RetryPolicy` (honouring `Retry-After`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from soul_client import models
from soul_client._core import DEFAULT_TIMEOUT, default_headers, error_from, is_event_stream, prepare, read_answer, \
    timeout_of
from soul_client._handles import TaskHandle
from soul_client._operations import OPERATIONS, Operations
from soul_client._retry import RetryPolicy, parse_retry_after
from soul_client._spec import Operation
from soul_client._sse import EventStream
from soul_client.errors import BadResponse, TransportError


class Client(Operations):
    """`Client(base_url, api_key=...)`; use it as a context manager, or call `close()`.

    `retry` decides retries (`NO_RETRIES` turns them off); `timeout` is the default of every call (seconds or an
    `httpx.Timeout`); `http` lets you pass your own `httpx.Client` (proxies, transports, tests)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float | httpx.Timeout | None = None,
                 retry: RetryPolicy | None = None, user_agent: str | None = None, http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._timeout = timeout_of(timeout, DEFAULT_TIMEOUT)
        self._http = http or httpx.Client()
        self._owns_http = http is None
        self._headers = default_headers(api_key, user_agent)
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # ---- verbs ---------------------------------------------------------------------------------------------------

    def image(self, soul_id: str, cue: str, user_id: str, *, idempotency_key: str | None = None,
              timeout: float | None = None, **options: Any) -> TaskHandle:
        """`POST /image`: a handle on the variant (ready at once, or the task that makes it). `options`:
        `webhook`, `webhook_events_filter`, `lane`."""
        order = models.ImageOrder(soul_id=soul_id, cue=cue, user_id=user_id, **options)
        return TaskHandle(self, self.image_post(order, idempotency_key=idempotency_key, timeout=timeout))

    def selfie(self, soul_id: str, city_key: str, mood: str, user_id: str, *, idempotency_key: str | None = None,
               timeout: float | None = None, **options: Any) -> TaskHandle:
        """`POST /image/selfie`: as `image`, in a place of the city (the answer's `place`)."""
        body = models.SelfieRequest(soul_id=soul_id, city_key=city_key, mood=mood, user_id=user_id, **options)
        # The generated `selfie` operation, which this verb wraps (and shadows).
        return TaskHandle(self, Operations.selfie(self, body, idempotency_key=idempotency_key, timeout=timeout))

    def animate(self, variant_id: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                **options: Any) -> TaskHandle:
        """`POST /video/generate-from-variant`: a handle on the animation of a variant. `options`: `num_frames`,
        `generate_gif`, `user_id`, `webhook`, `webhook_events_filter`."""
        answer = self.video_from_variant(variant_id=variant_id, idempotency_key=idempotency_key, timeout=timeout,
                                         **options)
        return TaskHandle(self, answer)

    def handle(self, task_id: str) -> TaskHandle:
        """A handle on a task by id (e.g. one a webhook named)."""
        return TaskHandle(self, self.task_get(task_id))

    def tasks(self, *, limit: int | None = None, page_size: int = 100, **filters: Any) -> Iterator[models.Task]:
        """Tasks, newest first, following `next_cursor` page by page (`status`, `type_`, `soul_id`, `user_id`)."""
        return self.paginate("task_list", limit=limit, page_size=page_size, **filters)

    def paginate(self, operation_id: str, *, limit: int | None = None, page_size: int = 100,
                 **arguments: Any) -> Iterator[Any]:
        """The items of any listing (an operation with a `cursor`), across its pages."""
        method = getattr(self, operation_id)
        cursor, seen = None, 0
        while limit is None or seen < limit:
            size = page_size if limit is None else min(page_size, limit - seen)
            page = method(page_size=size, cursor=cursor, **arguments)
            for item in page.items[: None if limit is None else limit - seen]:
                seen += 1
                yield item
            # A cursor that does not move would loop forever: treat it as the end.
            if not page.items or page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    def call(self, operation_id: str, *, path: dict | None = None, query: dict | None = None, body: Any = None,
             idempotency_key: str | None = None, timeout: float | None = None) -> Any:
        """Any operation by its operationId, with raw path/query dicts."""
        return self._operate(OPERATIONS[operation_id], path or {}, query or {}, body, timeout=timeout,
                             idempotency_key=idempotency_key)

    # ---- transport -----------------------------------------------------------------------------------------------

    def _operate(self, op: Operation, path: dict, query: dict, body: Any, *, timeout: float | None = None,
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
                response = self._http.send(request, stream=stream, follow_redirects=False)
            except httpx.TransportError as exc:
                delay = self.retry.delay(attempt, status=None, retry_after=None, idempotent=prepared.idempotent)
                if delay is None:
                    raise TransportError(f"{op.method} {self.base_url}{prepared.url}: {_reason(exc)}") from exc
                self._sleep(delay)
                continue
            if response.status_code < 400:
                if stream:
                    if not is_event_stream(response):
                        response.close()
                        raise BadResponse(f"{op.method} {prepared.url} answered without an event stream")
                    return EventStream(response)
                return read_answer(op, response)
            if stream:
                response.read()
                response.close()
            delay = self.retry.delay(attempt, status=response.status_code, idempotent=prepared.idempotent,
                                     retry_after=parse_retry_after(response.headers.get("Retry-After")))
            if delay is None:
                raise error_from(response)
            self._sleep(delay)


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    return type(exc).__name__
