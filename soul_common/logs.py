"""Structured JSON logs in Cloud Logging's shape (`severity`, `message`, `time`), with context bound per request."""

from __future__ import annotations

import logging
import sys

import structlog


def _cloud_logging_fields(_logger, method_name: str, event_dict: dict) -> dict:
    event_dict["severity"] = event_dict.pop("level", method_name).upper()
    event_dict["message"] = event_dict.pop("event", "")
    return event_dict


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write, not the object it was when logging was set up:
    a host that swaps the stream (a test runner's capture, a daemon that redirects) never leaves the loggers
    holding a closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", component: str = "functions") -> None:
    logging.basicConfig(stream=_CurrentStderr(), level=level.upper(), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.format_exc_info,
            _cloud_logging_fields,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(component=component)
