"""Following a task to its end: polls `GET /tasks/{id}` and shows progress, stage and the API's ETA, as a rich
progress bar on a terminal and as one line per change elsewhere (CI logs, pipes). Answers that mean "busy or
briefly down" are polled through; everything else ends the wait."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn

from soul_cli import render
from soul_cli.client import SoulClient
from soul_cli.errors import CliError, StillRunning
from schemas.api import Task
from schemas.jobs import TERMINAL_STATUSES


def wait_for_task(
    client: SoulClient, task_id: str, *, timeout_s: float, poll_interval_s: float, console: Console
) -> Task:
    """The task once it is succeeded, failed or canceled; `StillRunning` when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    task: Task | None = None
    shown: tuple[str, str] | None = None
    with _progress_bar(console) as progress:
        bar = progress.add_task(task_id, total=1.0, stage="queued", eta="?")
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


def _status_line(task: Task) -> str:
    return f"{task.task_id}: {task.status}, {task.stage}, {task.progress:.0%}, ETA {render.eta(task.eta_seconds)}"
