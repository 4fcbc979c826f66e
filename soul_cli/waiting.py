"""Following a task to its end with the Python client's handle (`soul_client.TaskHandle.progress`: its
server-sent events when the API offers them, else polls): shows progress, stage and the API's ETA, as a rich
progress bar on a terminal and as one line per change elsewhere (CI logs, pipes)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn

from soul_cli import render
from soul_cli.errors import StillRunning
from soul_client import TaskHandle, models
from soul_client._handles import TERMINAL


def wait_for_task(handle: TaskHandle, *, timeout_s: float, poll_interval_s: float, console: Console) -> models.Task:
    """The task once it is succeeded, failed or canceled; `StillRunning` when `timeout_s` passes first."""
    shown: tuple[str, str] | None = None
    with _progress_bar(console) as progress:
        bar = progress.add_task(handle.task_id, total=1.0, stage="queued", eta="?")
        for update in handle.progress(timeout=timeout_s, poll_interval=poll_interval_s):
            progress.update(bar, completed=update.progress, stage=update.stage, eta=render.eta(update.eta_seconds))
            if not console.is_terminal and (update.status, update.stage) != shown:
                shown = (update.status, update.stage)
                console.print(_status_line(update), markup=False, highlight=False)
    # The final view (the signed result) comes from GET /tasks/{id}, unless the last poll already read it.
    task = handle.task if handle.task is not None and handle.task.status in TERMINAL else handle.refresh()
    if task.status not in TERMINAL:
        raise StillRunning(
            f"gave up waiting after {timeout_s:g} s; task {task.task_id} is {task.status.value}. "
            f"Follow it with `soul task {task.task_id}`."
        )
    return task


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


def _status_line(task: models.Task | models.TaskUpdate) -> str:
    status = getattr(task.status, "value", task.status)
    return f"{task.task_id}: {status}, {task.stage}, {task.progress:.0%}, ETA {render.eta(task.eta_seconds)}"
