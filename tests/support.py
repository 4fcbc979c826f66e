"""Helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def function_server(target: str, env: dict[str, str], log_path: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """The function `target` of functions/main.py served by the real `functions_framework` process (its own
    process group, stopped by that id), once its /healthz answers: yields its port and process."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", target, "--source",
             str(REPO / "functions" / "main.py"), "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, f"the {target} server did not start"
                time.sleep(0.2)
            yield port, process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)


def pull_all(subscriber, subscription: str, *, rounds: int = 2, ack: bool = True, project: str | None = None) -> list:
    """Every message now on `subscription`: pulls until `rounds` empty answers in a row.

    Uses `return_immediately` (deprecated, still honoured by the emulator): a blocking pull on an empty
    subscription waits about 9 s there."""
    path = subscriber.subscription_path(project or os.environ["GCS_PROJECT_ID"], subscription)
    messages, empty = [], 0
    while empty < rounds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            response = subscriber.pull(
                request={"subscription": path, "max_messages": 100, "return_immediately": True}, timeout=10
            )
        if not response.received_messages:
            empty += 1
            continue
        empty = 0
        messages.extend(response.received_messages)
        if ack:
            subscriber.acknowledge(
                request={"subscription": path, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
    return messages


def api_client_with(monkeypatch, name: str, **env: str):
    """A test client of a fresh `api` (its own settings from `env`, set with monkeypatch), for tests that need
    settings other than the session's app."""
    import flask

    from functions.adapters.clients import make_clients
    from functions.http.app import Api
    from functions.settings import FunctionsSettings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = FunctionsSettings()
    api = Api(settings, make_clients(settings.project_id))
    app = flask.Flask(name, static_folder=None)  # Flask's own /static view would shadow the api's /static paths
    app.add_url_rule("/<path:path>", "all", lambda path: api(flask.request), methods=["GET", "POST", "DELETE"])
    return api, app.test_client()
