"""Following a task by its server-sent events (`GET /tasks/{id}/events`) instead of polling: one connection,
and each change arrives when it happens. Any trouble (an API without the endpoint, a proxy that buffers, a
dropped connection, the stream's duration limit) ends the stream quietly and the caller goes back to polling,
which handles every error as before."""

from __future__ import annotations

from collections.abc import Iterator

import requests
from pydantic import ValidationError

from soul_cli.client import SoulClient
from soul_cli.errors import CliError
from schemas.push import TaskUpdate

ENDING_EVENTS = frozenset({"end", "timeout", "error"})


def parse_stream(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of an SSE stream; comment lines (heartbeats) and `retry:` are skipped."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


def task_updates(client: SoulClient, task_id: str, read_timeout_s: float) -> Iterator[TaskUpdate]:
    """The task's updates until the stream ends; nothing (or a short run) when events are not available."""
    try:
        response = client.open_events(task_id, read_timeout_s)
    except CliError:
        return
    with response:
        try:
            for event, data in parse_stream(response.iter_lines(decode_unicode=True)):
                if event in ENDING_EVENTS:
                    return
                if event == "update":
                    yield TaskUpdate.model_validate_json(data)
        except (requests.RequestException, ValidationError):
            return
