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
"Live progress"). Closing the stream (the client went away, or it ended) gives its slot back.

Event ids say what the client has been sent, not how many frames one connection sent: `<digest of the update>.
<preview step>`. A client that reconnects with `Last-Event-ID` (EventSource does so by itself) is not sent the
update or preview it already has, on any instance; an id this stream did not make is ignored (the stream starts
with the current state, as without one)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator

from functions.services.progress import Follow, ProgressHub, Snapshot
from functions.settings import FunctionsSettings
from schemas.api import Task
from schemas.jobs import TERMINAL_STATUSES, JobStatus
from schemas.push import TaskUpdate

RECONNECT_MS = 2000
KEEPALIVE = ": keepalive\n\n"
EVENT_ID = re.compile(r"([0-9a-f]{16})\.([0-9]{1,6})")


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


def _render(task: Task | None) -> tuple[TaskUpdate | None, str | None, str, int, str | None]:
    """A view's update, its JSON and digest, and its preview's step and JSON, made once per change and viewer
    (functions/services/progress.py)."""
    if task is None:
        return None, None, "", 0, None
    update = update_of(task)
    preview = task.preview
    data = update.model_dump_json()
    return (update, data, hashlib.blake2b(data.encode(), digest_size=8).hexdigest(),
            preview.step if preview is not None else 0, preview.model_dump_json() if preview is not None else None)


def resumed_from(last_event_id: str | None) -> tuple[str, int]:
    """The update digest and preview step a `Last-Event-ID` says the client has; ("", 0) for none or a foreign
    id."""
    match = EVENT_ID.fullmatch(last_event_id.strip()) if last_event_id else None
    return (match.group(1), int(match.group(2))) if match else ("", 0)


def _error(message: str) -> str:
    return frame("error", json.dumps({"message": message}))


class EventStream:
    """The frames of one follower's stream; iterate it once, either way."""

    def __init__(self, follow: Follow, first: Snapshot, settings: FunctionsSettings, *,
                 last_event_id: str | None = None, clock: Callable[[], float] = time.monotonic):
        self._follow = follow
        self._first = first
        self._settings = settings
        self._clock = clock
        # what the client has: the digest of its last update, the step of its last preview (previews come with
        # the view while running, at most one per step)
        self._last_digest, self._last_preview_step = resumed_from(last_event_id)
        self.done = False

    def _id(self) -> str:
        return f"{self._last_digest}.{self._last_preview_step}"

    def _frames(self, snap: Snapshot) -> list[str]:
        """What `snap` adds to the stream; sets `done` when the stream must end."""
        if snap.failed:
            self.done = True
            return [_error("the task could not be read; reconnect to resume")]
        current, data, digest, preview_step, preview = self._follow.rendered(snap, _render)
        if current is None:  # no longer visible to this tenant (withdrawn) or gone
            self.done = True
            return [_error("the task is no longer available")]
        out = []
        if digest != self._last_digest:
            self._last_digest = digest
            out.append(f"id: {self._id()}\nevent: update\ndata: {data}\n\n")
        if preview is not None and preview_step > self._last_preview_step:
            self._last_preview_step = preview_step
            out.append(f"id: {self._id()}\nevent: preview\ndata: {preview}\n\n")
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
                admin: bool = False, last_event_id: str | None = None) -> EventStream:
    """A stream of `task_id` for `tenant` from where `last_event_id` left it: 429 when the caps are full, 404 when
    it does not show to `tenant`."""
    follow, first = hub.follow(task_id, tenant, admin=admin)
    return EventStream(follow, first, settings, last_event_id=last_event_id)
