"""Live progress of a task as server-sent events (`GET /tasks/{id}/events`): the same view GET /tasks/{id}
gives (and the same visibility: the first read goes through the task service), sent as `event: update` each
time status, stage, progress or eta changes, ending at a terminal state with the result (`event: end`); while an
image renders with previews on, `event: preview` `{task_id, step, steps, url}` each time the view's preview moves
to a later step (the task view signs it only for content policies that show previews).

It polls the job document (one read per `sse_poll_interval_s`) rather than holding a Firestore listener: a
listener keeps a gRPC stream and a thread per open connection, while polling costs nothing between reads and
behaves the same on the emulator. A comment line every `sse_heartbeat_s` keeps proxies from closing an idle
stream; after `sse_max_duration_s` the stream ends with `event: timeout` and the client reconnects (a Cloud
Functions gen2 request may not outlive the function's timeout, and each open stream holds one concurrency slot
of an instance: docs/ARCHITECTURE.md, "Live progress")."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import structlog
from google.api_core import exceptions as gexc

from functions.core import errors
from functions.settings import FunctionsSettings
from schemas.api import Task
from schemas.jobs import TERMINAL_STATUSES, JobStatus
from schemas.push import TaskUpdate

log = structlog.get_logger(__name__)

RECONNECT_MS = 2000


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


def task_events(read: Callable[[], Task], settings: FunctionsSettings, *,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """The event stream of one task; `read()` gives its current view (raises NotFound when it is gone)."""
    started = last_write = clock()
    last: TaskUpdate | None = None
    last_preview_step = 0  # previews (`event: preview`) come with the view while running, at most one per step
    sent = 0
    yield f"retry: {RECONNECT_MS}\n\n"
    while True:
        try:
            task = read()
            current = update_of(task)
        except (errors.SoulError, gexc.GoogleAPICallError, gexc.RetryError) as exc:
            log.warning("sse_read_failed", error=str(exc))
            yield frame("error", json.dumps({"message": "the task could not be read; reconnect to resume"}))
            return
        if current != last:
            yield frame("update", current.model_dump_json(), sent)
            sent, last, last_write = sent + 1, current, clock()
        if task.preview is not None and task.preview.step > last_preview_step:
            yield frame("preview", task.preview.model_dump_json(), sent)
            sent, last_preview_step, last_write = sent + 1, task.preview.step, clock()
        if JobStatus(current.status) in TERMINAL_STATUSES:
            yield frame("end", json.dumps({"status": current.status}))
            return
        if clock() - started >= settings.sse_max_duration_s:
            yield frame("timeout", json.dumps({"message": "stream duration limit reached; reconnect to resume"}))
            return
        if clock() - last_write >= settings.sse_heartbeat_s:
            yield ": keepalive\n\n"
            last_write = clock()
        sleep(settings.sse_poll_interval_s)
