"""Server-sent events: the line parser (pure) and the sync and async streams over an httpx response. The API
sends `event: update` with a `TaskUpdate` each time a task changes, then `end`, `timeout` (the stream's
duration limit: reconnect) or `error`; comment lines are heartbeats."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SseParser:
    """Feed it lines (without their end of line); it returns each event once its blank line arrives."""

    def __init__(self) -> None:
        self._event, self._data, self._id = "message", [], None

    def feed(self, line: str) -> ServerSentEvent | None:
        if line == "":
            event = ServerSentEvent(self._event, "\n".join(self._data), self._id) if self._data else None
            self._event, self._data = "message", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def parse_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    parser = SseParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


class EventStream:
    """An open `text/event-stream` answer; iterate it for events; close it (or use `with`) when done."""

    def __init__(self, response: httpx.Response):
        self.response = response

    def __iter__(self) -> Iterator[ServerSentEvent]:
        yield from parse_events(self.response.iter_lines())

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEventStream:
    """The async `EventStream`: `async for event in stream`, then `await stream.aclose()`."""

    def __init__(self, response: httpx.Response):
        self.response = response

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        parser = SseParser()
        async for line in self.response.aiter_lines():
            event = parser.feed(line)
            if event is not None:
                yield event

    async def aclose(self) -> None:
        await self.response.aclose()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
