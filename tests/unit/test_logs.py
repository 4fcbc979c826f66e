"""Logs go to the stderr of the moment: set up while one stream was in place, they must still work once it is
closed and replaced (pytest's capture does exactly that between tests)."""

import io
import json
import sys

import structlog

from soul_common.logs import configure_logging


def test_logs_set_up_on_a_stream_that_is_later_closed_go_to_the_current_stderr(monkeypatch):
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("INFO", component="test")
    log = structlog.get_logger("soul.test")
    log.info("before", n=1)
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    log.info("after", n=2)
    line = json.loads(second.getvalue().strip().splitlines()[-1])
    assert line["message"] == "after" and line["n"] == 2 and line["severity"] == "INFO"
    assert line["component"] == "test"
    structlog.contextvars.unbind_contextvars("component")
