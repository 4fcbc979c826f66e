"""HTTP client of the `api` function. Answers are parsed into the contract models of `schemas.api`, so a CLI
and an API that disagree fail loudly (`BadResponse`) instead of printing half a result; error answers become
`ApiError` with the server's structured code, message and field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from pydantic import BaseModel, ValidationError

from soul_cli import __version__
from soul_cli.errors import ApiError, ApiUnreachable, BadResponse
from schemas.api import ErrorBody, ImageQueued, ImageReady, Task, TaskPage
from schemas.jobs import JobStatus, JobType

__all__ = ["ApiError", "SoulClient"]

M = TypeVar("M", bound=BaseModel)

MAX_PAGE_SIZE = 100  # the API's bound on page_size (schemas.api.PageQuery)
DEFAULT_TIMEOUT_S = 30.0


class SoulClient:
    """One API base URL and optional API key; a requests.Session reused across calls. Use it as a context
    manager, or call `close()`."""

    def __init__(
        self,
        api_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        session: requests.Session | None = None,
    ):
        self.api_url = api_url.rstrip("/")
        self._timeout_s = timeout_s
        self._session = session or requests.Session()
        self._session.headers.update({"Accept": "application/json", "User-Agent": f"soul-cli/{__version__}"})
        if api_key:
            # X-API-Key leaves `Authorization` free for an ID token where the platform checks one (invoker IAM).
            self._session.headers["X-API-Key"] = api_key

    def __enter__(self) -> SoulClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    # ---- images ------------------------------------------------------------------------------------------------

    def request_image(self, soul_id: str, cue: str, user_id: str) -> ImageReady | ImageQueued:
        """`GET /image`: a ready variant (200) or the task that makes one (202)."""
        status, body = self._call("GET", "/image", params={"soul_id": soul_id, "cue": cue, "user_id": user_id})
        return _parse(ImageReady, body) if status == 200 else _parse(ImageQueued, body)

    def request_selfie(self, soul_id: str, city_key: str, mood: str, user_id: str) -> ImageReady | ImageQueued:
        """`POST /image/selfie`: as `request_image`, with the chosen place."""
        body = {"soul_id": soul_id, "city_key": city_key, "mood": mood, "user_id": user_id}
        status, answer = self._call("POST", "/image/selfie", json=body)
        return _parse(ImageReady, answer) if status == 200 else _parse(ImageQueued, answer)

    # ---- tasks -------------------------------------------------------------------------------------------------

    def task(self, task_id: str) -> Task:
        _, body = self._call("GET", f"/tasks/{_segment(task_id)}")
        return _parse(Task, body)

    def cancel(self, task_id: str) -> Task:
        """`DELETE /tasks/{id}`: canceled at once when queued; `cancel_requested` when running; 409 when over."""
        _, body = self._call("DELETE", f"/tasks/{_segment(task_id)}")
        return _parse(Task, body)

    def tasks_page(
        self,
        *,
        status: JobStatus | None = None,
        job_type: JobType | None = None,
        soul_id: str | None = None,
        user_id: str | None = None,
        page_size: int = 20,
        cursor: str | None = None,
    ) -> TaskPage:
        params = {"status": status, "type": job_type, "soul_id": soul_id, "user_id": user_id,
                  "page_size": page_size, "cursor": cursor}
        _, body = self._call("GET", "/tasks", params={k: str(v) for k, v in params.items() if v is not None})
        return _parse(TaskPage, body)

    def iter_tasks(self, *, limit: int, **filters: Any) -> Iterator[Task]:
        """Up to `limit` tasks, newest first, following `next_cursor` from page to page."""
        remaining, cursor = limit, None
        while remaining > 0:
            page = self.tasks_page(page_size=min(remaining, MAX_PAGE_SIZE), cursor=cursor, **filters)
            items = page.items[:remaining]
            yield from items
            remaining -= len(items)
            # A cursor that does not move would loop forever: treat it as the end.
            if page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    def open_events(self, task_id: str, read_timeout_s: float) -> requests.Response:
        """`GET /tasks/{id}/events`, streamed (soul_cli/events.py reads it); ApiError when it is not a stream."""
        url = f"{self.api_url}/tasks/{_segment(task_id)}/events"
        try:
            response = self._session.get(url, stream=True, timeout=(min(5.0, self._timeout_s), read_timeout_s),
                                         headers={"Accept": "text/event-stream"})
        except requests.RequestException as exc:
            raise ApiUnreachable(f"cannot reach the Soul API at {self.api_url}: {_reason(exc)}") from None
        if response.status_code != 200 or not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            response.close()
            raise ApiError(response.status_code, "no_event_stream", "the API offers no event stream here")
        return response

    # ---- transport ---------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, params: dict | None = None, json: dict | None = None) -> tuple[int, Any]:
        url = self.api_url + path
        try:
            response = self._session.request(method, url, params=params, json=json, timeout=self._timeout_s)
        except requests.RequestException as exc:
            raise ApiUnreachable(f"cannot reach the Soul API at {self.api_url}: {_reason(exc)}") from None
        if response.status_code >= 400:
            raise _error(response)
        try:
            return response.status_code, response.json()
        except ValueError:
            raise BadResponse(
                f"{method} {url} answered {response.status_code} without JSON; is {self.api_url} the Soul API?"
            ) from None


def _segment(value: str) -> str:
    """A path segment: a task id with '/' or '..' in it must not reach another endpoint."""
    return quote(value, safe="")


def _parse(model: type[M], body: Any) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadResponse(
            f"the API's answer is not a {model.__name__} as this CLI knows it ({where}: {first['msg']}); "
            "is the CLI older than the API?"
        ) from None


def _error(response: requests.Response) -> ApiError:
    """The structured error body when there is one; otherwise the status and the start of the text."""
    try:
        detail = ErrorBody.model_validate(response.json()).error
        return ApiError(response.status_code, detail.code, detail.message, detail.field)
    except (ValueError, ValidationError):
        text = " ".join(response.text.split())[:200] or response.reason or "no body"
        return ApiError(response.status_code, f"http_{response.status_code}", text)


def _reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed (is the API running? `make run` starts it locally)"
    return type(exc).__name__
