"""Handles on work the API accepted: `image()`, `selfie()` and `animate()` return one. `wait()` follows the task
over its server-sent events when the API offers them and polls `GET /tasks/{id}` with backoff otherwise (or
after the stream ends early); `progress()` yields each change as a `TaskUpdate`; `cancel()` cancels. An answer
that was ready at once (an unseen variant existed) has no task: `wait()` returns its result straight away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx

from soul_client import models
from soul_client.errors import SoulError, TaskFailed, WaitTimeout

if TYPE_CHECKING:
    from soul_client._async import AsyncClient
    from soul_client._client import Client

TERMINAL = frozenset({models.JobStatus.succeeded, models.JobStatus.failed, models.JobStatus.canceled})
ENDING_EVENTS = frozenset({"end", "timeout", "error"})
MAX_POLL_INTERVAL_S = 5.0
Answer = models.ImageReady | models.ImageQueued | models.VideoAccepted | models.Task


def _task_id(answer: Any) -> str | None:
    return None if isinstance(answer, models.ImageReady) else answer.task_id


def _immediate(answer: Any) -> models.TaskResult | None:
    """The result when the answer already is one: an image ready at once, or a video job already done."""
    if isinstance(answer, models.ImageReady):
        return models.TaskResult(variant=answer.variant, outputs=[])
    if isinstance(answer, models.VideoAccepted) and answer.status == models.JobStatus.succeeded and answer.result:
        return answer.result
    return None


def _update_of(task: models.Task) -> models.TaskUpdate:
    return models.TaskUpdate(task_id=task.task_id, status=task.status, stage=task.stage, progress=task.progress,
                             eta_seconds=task.eta_seconds)


def _outcome(task: models.Task) -> models.TaskResult:
    if task.status == models.JobStatus.succeeded:
        return task.result or models.TaskResult(outputs=[])
    detail = f": {task.error.type}: {task.error.message}" if task.error else ""
    raise TaskFailed(f"task {task.task_id} {task.status.value}{detail}", task)


class TaskHandle:
    """Work the API accepted. `answer` is its first answer; `task_id` is None when it was ready at once."""

    def __init__(self, client: Client, answer: Answer):
        self._client = client
        self.answer = answer
        self.task_id = _task_id(answer)
        self.task: models.Task | None = answer if isinstance(answer, models.Task) else None

    def __repr__(self) -> str:
        return f"TaskHandle({self.task_id or 'ready'})"

    def refresh(self) -> models.Task:
        self.task = self._client.task_get(self._require_task())
        return self.task

    def cancel(self) -> models.Task:
        """Canceled at once when queued; `cancel_requested` when running; `Conflict` when it is over."""
        self.task = self._client.task_cancel(self._require_task())
        return self.task

    def progress(self, *, timeout: float = 300.0, poll_interval: float = 1.0, events: bool = True,
                 ) -> Iterator[models.TaskUpdate]:
        """Each change of the task until it ends (or `timeout` passes): its events, else polls."""
        if self.task_id is None:
            return
        deadline = time.monotonic() + timeout
        last: models.TaskUpdate | None = None
        if events:
            for update in self._events(deadline):
                last = update
                yield update
                if update.status in TERMINAL:
                    return
        interval = poll_interval
        while True:
            task = self.refresh()
            update = _update_of(task)
            if last is None or (update.status, update.stage, update.progress) != (last.status, last.stage,
                                                                                  last.progress):
                last = update
                yield update
            left = deadline - time.monotonic()
            if task.status in TERMINAL or left <= 0:
                return
            time.sleep(min(interval, left))
            interval = min(MAX_POLL_INTERVAL_S, interval * 1.5)

    def wait(self, timeout: float = 300.0, *, poll_interval: float = 1.0, events: bool = True) -> models.TaskResult:
        """The result once the task succeeded; `TaskFailed` when it failed or was canceled, `WaitTimeout` when
        `timeout` passed first (the task goes on)."""
        ready = _immediate(self.answer)
        if ready is not None:
            return ready
        for _ in self.progress(timeout=timeout, poll_interval=poll_interval, events=events):
            pass
        task = self.task if self.task is not None and self.task.status in TERMINAL else self.refresh()
        if task.status not in TERMINAL:
            raise WaitTimeout(f"task {self.task_id} is still {task.status.value} after {timeout:g} s")
        return _outcome(task)

    def _events(self, deadline: float) -> Iterator[models.TaskUpdate]:
        try:
            stream = self._client.task_events(self._require_task(), timeout=max(1.0, deadline - time.monotonic()))
        except SoulError:
            return  # no stream here: the caller polls
        with stream:
            try:
                for event in stream:
                    if event.event in ENDING_EVENTS or time.monotonic() >= deadline:
                        return
                    if event.event == "update":
                        yield models.TaskUpdate.model_validate_json(event.data)
            except (httpx.HTTPError, ValueError):
                return  # a dropped or cut stream, or a malformed event: polling takes over

    def _require_task(self) -> str:
        if self.task_id is None:
            raise ValueError("this answer was ready at once: there is no task to follow")
        return self.task_id


class AsyncTaskHandle:
    """The async `TaskHandle`: `await handle.wait()`, `async for update in handle.progress()`."""

    def __init__(self, client: AsyncClient, answer: Answer):
        self._client = client
        self.answer = answer
        self.task_id = _task_id(answer)
        self.task: models.Task | None = answer if isinstance(answer, models.Task) else None

    def __repr__(self) -> str:
        return f"AsyncTaskHandle({self.task_id or 'ready'})"

    async def refresh(self) -> models.Task:
        self.task = await self._client.task_get(self._require_task())
        return self.task

    async def cancel(self) -> models.Task:
        self.task = await self._client.task_cancel(self._require_task())
        return self.task

    async def progress(self, *, timeout: float = 300.0, poll_interval: float = 1.0, events: bool = True,
                       ) -> AsyncIterator[models.TaskUpdate]:
        if self.task_id is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: models.TaskUpdate | None = None
        if events:
            async for update in self._events(deadline):
                last = update
                yield update
                if update.status in TERMINAL:
                    return
        interval = poll_interval
        while True:
            task = await self.refresh()
            update = _update_of(task)
            if last is None or (update.status, update.stage, update.progress) != (last.status, last.stage,
                                                                                  last.progress):
                last = update
                yield update
            left = deadline - loop.time()
            if task.status in TERMINAL or left <= 0:
                return
            await asyncio.sleep(min(interval, left))
            interval = min(MAX_POLL_INTERVAL_S, interval * 1.5)

    async def wait(self, timeout: float = 300.0, *, poll_interval: float = 1.0, events: bool = True,
                   ) -> models.TaskResult:
        ready = _immediate(self.answer)
        if ready is not None:
            return ready
        async for _ in self.progress(timeout=timeout, poll_interval=poll_interval, events=events):
            pass
        task = self.task if self.task is not None and self.task.status in TERMINAL else await self.refresh()
        if task.status not in TERMINAL:
            raise WaitTimeout(f"task {self.task_id} is still {task.status.value} after {timeout:g} s")
        return _outcome(task)

    async def _events(self, deadline: float) -> AsyncIterator[models.TaskUpdate]:
        loop = asyncio.get_running_loop()
        try:
            stream = await self._client.task_events(self._require_task(), timeout=max(1.0, deadline - loop.time()))
        except SoulError:
            return
        async with stream:
            try:
                async for event in stream:
                    if event.event in ENDING_EVENTS or loop.time() >= deadline:
                        return
                    if event.event == "update":
                        yield models.TaskUpdate.model_validate_json(event.data)
            except (httpx.HTTPError, ValueError):
                return  # a dropped or cut stream, or a malformed event: polling takes over

    def _require_task(self) -> str:
        if self.task_id is None:
            raise ValueError("this answer was ready at once: there is no task to follow")
        return self.task_id
