"""Helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import os
import warnings


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
