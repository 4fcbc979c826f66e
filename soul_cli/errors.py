"""The CLI's error family and what each means for the exit status. Every failure a user can meet (a refused
request, an unreachable service, a failed task) is a `CliError`; the app prints its message on one line and
exits with its `exit_code`, never with a traceback. The Python client's errors (retries included, decided in
soul_client) become these in `main._cli_error`."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    UNSUCCESSFUL = 1  # the task failed or was canceled
    ERROR = 2  # bad usage (click's own code), an HTTP error answer, the API or Pub/Sub out of reach
    STILL_RUNNING = 3  # --timeout passed before the task finished; it goes on without us


class CliError(Exception):
    """Base: a failure reported in one line."""

    exit_code = ExitCode.ERROR


class ApiError(CliError):
    """The API answered 4xx/5xx; `code`, `message` and `field` come from its `{"error": {...}}` body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        where = f" (field: {self.field})" if self.field else ""
        return f"{self.message}{where} [{self.code}, HTTP {self.status}]"


class ApiUnreachable(CliError):
    """No HTTP answer at all: connection refused, DNS, timeout."""


class BadResponse(CliError):
    """A 2xx answer whose body is not the API's document: a wrong --api-url, or an API newer than this CLI."""


class BusError(CliError):
    """Pub/Sub refused or could not be reached."""


class TaskUnsuccessful(CliError):
    """The task ended failed or canceled."""

    exit_code = ExitCode.UNSUCCESSFUL


class StillRunning(CliError):
    """The wait timed out; the task itself goes on."""

    exit_code = ExitCode.STILL_RUNNING
