"""Following a task to its end: its server-sent events when the API offers them (soul_cli/events.py), else
(or after the stream ends early) polls `GET /tasks/{id}`; shows progress, stage and the API's ETA, as a rich
progress bar on a terminal and as one line per change elsewhere (CI logs, pipes). Answers that mean "busy or
briefly down" are polled through; everything else ends the wait."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn

from soul_cli import render
from soul_cli.client import SoulClient
from soul_cli.errors import CliError, StillRunning
from soul_cli.events import task_updates
from schemas.api import Task
from schemas.jobs import TERMINAL_STATUSES
from schemas.push import TaskUpdate


def wait_for_task(
    client: SoulClient, task_id: str, *, timeout_s: float, poll_interval_s: float, console: Console
) -> Task:
    """The task once it is succeeded, failed or canceled; `StillRunning` when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    task: Task | None = None
    shown: tuple[str, str] | None = None
    with _progress_bar(console) as progress:
        bar = progress.add_task(task_id, total=1.0, stage="queued", eta="?")
        for update in task_updates(client, task_id, read_timeout_s=max(0.1, min(30.0, timeout_s))):
            progress.update(bar, completed=update.progress, stage=update.stage, eta=render.eta(update.eta_seconds))
            if not console.is_terminal and (update.status, update.stage) != shown:
                shown = (update.status, update.stage)
                console.print(_status_line(update), markup=False, highlight=False)
            if update.status in TERMINAL_STATUSES or time.monotonic() >= deadline:
                break  # the final view (signed result) comes from GET /tasks/{id} below
        while True:
            try:
                task = client.task(task_id)
            except CliError as exc:
                if not exc.retryable:
                    raise
                progress.update(bar, stage=f"retrying ({exc})")
            else:
                progress.update(bar, completed=task.progress, stage=task.stage, eta=render.eta(task.eta_seconds))
                if not console.is_terminal and (task.status, task.stage) != shown:
                    shown = (task.status, task.stage)
                    console.print(_status_line(task), markup=False, highlight=False)
                if task.status in TERMINAL_STATUSES:
                    return task
            left = deadline - time.monotonic()
            if left <= 0:
                raise StillRunning(
                    f"gave up waiting after {timeout_s:g} s; task {task_id} is {task.status if task else 'unknown'}. "
                    f"Follow it with `soul task {task_id}`."
                )
            time.sleep(min(poll_interval_s, left))


def _progress_bar(console: Console) -> Progress:
    """Progress, stage and the API's ETA (not rich's own estimate); drawn only on a terminal."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[stage]}"),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _status_line(task: Task | TaskUpdate) -> str:
    return f"{task.task_id}: {task.status}, {task.stage}, {task.progress:.0%}, ETA {render.eta(task.eta_seconds)}"
