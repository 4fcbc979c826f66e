"""Live progress of a task as server-sent events (`GET /tasks/{id}/events`): the same view GET /tasks/{id}
gives (and the same visibility), sent as `event: update` each time status, stage, progress or eta changes,
ending at a terminal state with the result (`event: end`); while an image renders with previews on,
`event: preview` `{task_id, step, steps, url}` each time the view's preview moves to a later step (the task view
signs it only for content policies that show previews).

A stream does not read the job itself: it follows the instance's shared watcher (functions/services/progress.py),
so a thousand followers of one job cost the reads of one. `EventStream` is both an iterator (WSGI: the
in-process `api` target, where a stream holds its thread) and an async iterator (the deployed `api_async`
target, functions/http/asgi.py, where a waiting stream holds no thread at all). A comment line every
`sse_heartbeat_s` keeps proxies from closing an idle stream; after `sse_max_duration_s` the stream ends with
`event: timeout` and the client reconnects (a request may not outlive the function's timeout: docs/ARCHITECTURE.md,
"Live progress"). Closing the stream (the client went away, or it ended) gives its slot back."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator

from functions.services.progress import Follow, ProgressHub, Snapshot
from functions.settings import FunctionsSettings
from schemas.api import Task
from schemas.jobs import TERMINAL_STATUSES, JobStatus
from schemas.push import TaskUpdate

RECONNECT_MS = 2000
KEEPALIVE = ": keepalive\n\n"


def update_of(task: Task) -> TaskUpdate:
    done = JobStatus(task.status) in TERMINAL_STATUSES
    return TaskUpdate(
        task_id=task.task_id, status=task.status, stage=task.stage, progress=task.progress,
        eta_seconds=task.eta_seconds,
        result=task.result.model_dump(mode="json") if done and task.result else None,
        error=task.error.model_dump(mode="json") if task.error else None,
    )


def frame(event: str, data: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def _render(task: Task | None) -> tuple[TaskUpdate | None, str | None, int, str | None]:
    """A view's update and its JSON, and its preview's step and JSON, made once per change and viewer
    (functions/services/progress.py)."""
    if task is None:
        return None, None, 0, None
    update = update_of(task)
    preview = task.preview
    return (update, update.model_dump_json(), preview.step if preview is not None else 0,
            preview.model_dump_json() if preview is not None else None)


def _error(message: str) -> str:
    return frame("error", json.dumps({"message": message}))


class EventStream:
    """The frames of one follower's stream; iterate it once, either way."""

    def __init__(self, follow: Follow, first: Snapshot, settings: FunctionsSettings, *,
                 clock: Callable[[], float] = time.monotonic):
        self._follow = follow
        self._first = first
        self._settings = settings
        self._clock = clock
        self._last: TaskUpdate | None = None
        self._last_preview_step = 0  # previews come with the view while running, at most one per step
        self._sent = 0
        self.done = False

    def _frames(self, snap: Snapshot) -> list[str]:
        """What `snap` adds to the stream; sets `done` when the stream must end."""
        if snap.failed:
            self.done = True
            return [_error("the task could not be read; reconnect to resume")]
        current, data, preview_step, preview = self._follow.rendered(snap, _render)
        if current is None:  # no longer visible to this tenant (withdrawn) or gone
            self.done = True
            return [_error("the task is no longer available")]
        out = []
        if current is not self._last and current != self._last:
            out.append(f"id: {self._sent}\nevent: update\ndata: {data}\n\n")
            self._sent, self._last = self._sent + 1, current
        if preview is not None and preview_step > self._last_preview_step:
            out.append(f"id: {self._sent}\nevent: preview\ndata: {preview}\n\n")
            self._sent, self._last_preview_step = self._sent + 1, preview_step
        if JobStatus(current.status) in TERMINAL_STATUSES:
            self.done = True
            out.append(frame("end", json.dumps({"status": current.status})))
        return out

    def _timeout_frame(self) -> str:
        self.done = True
        return frame("timeout", json.dumps({"message": "stream duration limit reached; reconnect to resume"}))

    def _deadlines(self, started: float, last_write: float) -> tuple[float, bool]:
        """Seconds to wait for the next snapshot, and whether the stream's duration is spent."""
        now = self._clock()
        left = self._settings.sse_max_duration_s - (now - started)
        return max(0.0, min(left, self._settings.sse_heartbeat_s - (now - last_write))), left <= 0

    def __iter__(self) -> Iterator[str]:
        try:
            yield f"retry: {RECONNECT_MS}\n\n"
            started = last_write = self._clock()
            yield from self._frames(self._first)
            version, watch = self._first.version, self._follow.watch
            while not self.done:
                wait, spent = self._deadlines(started, last_write)
                if spent:
                    yield self._timeout_frame()
                    break
                snap = watch.wait(version, wait)
                if snap is not None:
                    version = snap.version
                    out = self._frames(snap)
                    if out:
                        last_write = self._clock()
                        yield from out
                elif self._clock() - last_write >= self._settings.sse_heartbeat_s:
                    last_write = self._clock()
                    yield KEEPALIVE
        finally:
            self.close()

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            yield f"retry: {RECONNECT_MS}\n\n"
            started = last_write = self._clock()
            for chunk in self._frames(self._first):
                yield chunk
            version, watch = self._first.version, self._follow.watch
            while not self.done:
                wait, spent = self._deadlines(started, last_write)
                if spent:
                    yield self._timeout_frame()
                    break
                snap = await watch.wait_async(version, wait)
                if snap is not None:
                    version = snap.version
                    out = self._frames(snap)
                    if out:
                        last_write = self._clock()
                        for chunk in out:
                            yield chunk
                elif self._clock() - last_write >= self._settings.sse_heartbeat_s:
                    last_write = self._clock()
                    yield KEEPALIVE
        finally:
            self.close()

    def close(self) -> None:
        """Give the stream's slot and watch back (idempotent; WSGI servers call it when the client leaves)."""
        self._follow.close()


def open_stream(hub: ProgressHub, task_id: str, tenant: str, settings: FunctionsSettings, *,
                admin: bool = False) -> EventStream:
    """A stream of `task_id` for `tenant`: 429 when the caps are full, 404 when it does not show to `tenant`."""
    follow, first = hub.follow(task_id, tenant, admin=admin)
    return EventStream(follow, first, settings)
