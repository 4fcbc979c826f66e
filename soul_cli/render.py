"""How the CLI shows things: tables for people, one line per event, JSON for scripts. Pure functions of the
client's models (soul_client.models) and received messages; nothing here does I/O. Cell values are `Text`, never markup, so a
`[...]` in a server message prints as it is."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from rich.table import Table
from rich.text import Text

from soul_cli.bus import Received
from soul_cli.dead_letters import DeadLetter
from soul_client._handles import TERMINAL as TERMINAL_STATUSES
from soul_client.models import Task

NONE = "-"


def eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


def when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else NONE


def task_url(task: Task) -> str | None:
    return task.result.variant.url if task.result and task.result.variant else None


def task_table(task: Task) -> Table:
    """One task as field/value rows."""
    finished = task.status in TERMINAL_STATUSES
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("task", task.task_id),
        ("type", task.type),
        ("status", task.status + (" (cancel requested)" if task.cancel_requested and not finished else "")),
        ("progress", f"{task.progress:.0%}"),
        ("stage", task.stage),
        ("eta", NONE if finished else eta(task.eta_seconds)),
        ("soul", task.soul_id or NONE),
        ("user", task.user_id or NONE),
        ("created", when(task.created_at)),
        ("started", when(task.started_at)),
        ("finished", when(task.finished_at)),
        ("attempts", str(task.attempts)),
    ]
    if url := task_url(task):
        rows.append(("url", url))
    for output in task.result.outputs if task.result else ():
        rows.append((output.format, output.url))
    if task.error:
        rows.append(("error", f"{task.error.type}: {task.error.message}"))
    for field, value in rows:
        table.add_row(field, Text(str(value)))
    return table


def tasks_table(tasks: Iterable[Task]) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("task", no_wrap=True)
    for name in ("type", "status", "progress", "soul", "user", "created"):
        table.add_column(name)
    for task in tasks:
        table.add_row(*(Text(str(v)) for v in (
            task.task_id, task.type, task.status, f"{task.progress:.0%}", task.soul_id or NONE,
            task.user_id or NONE, when(task.created_at),
        )))
    return table


def _data(received: Received) -> object:
    """The message data as JSON when it is JSON, else as text."""
    try:
        return json.loads(received.data)
    except ValueError:
        return received.data.decode("utf-8", errors="replace")


def event_line(received: Received) -> str:
    """`time  type  id  status` of a CloudEvent in binary mode. Events from the functions carry no ce-time;
    their publish time stands in."""
    attributes = received.attributes
    data = _data(received)
    status = data.get("status") if isinstance(data, dict) else None
    return "  ".join((
        attributes.get("ce-time") or when(received.publish_time),
        attributes.get("ce-type", NONE),
        attributes.get("ce-id", NONE),
        str(status or NONE),
    ))


def message_json(received: Received, **extra: object) -> str:
    """One message as a JSON line: id, publish time, attributes and data, plus `extra` fields."""
    return json.dumps({
        "message_id": received.message_id,
        "publish_time": when(received.publish_time),
        "attributes": dict(received.attributes),
        "data": _data(received),
        **extra,
    })


def dead_letter_json(letter: DeadLetter) -> str:
    return message_json(letter.received, replayable=letter.replayable, problem=letter.problem)


def dead_letters_table(letters: Iterable[DeadLetter]) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("message", no_wrap=True)
    table.add_column("published")
    table.add_column("job")
    table.add_column("attributes", overflow="fold")
    table.add_column("replayable", overflow="fold")
    for letter in letters:
        received = letter.received
        job = f"{letter.job.job_id} ({letter.job.type})" if letter.job else NONE
        attributes = "\n".join(f"{k}={v}" for k, v in sorted(received.attributes.items())) or NONE
        if letter.reason is None:
            attributes += "\n(no soul-dead-letter-reason: moved by Pub/Sub after its delivery attempts ran out)"
        table.add_row(*(Text(v) for v in (
            received.message_id, when(received.publish_time), job, attributes,
            "yes" if letter.replayable else f"no: {letter.problem}",
        )))
    return table
