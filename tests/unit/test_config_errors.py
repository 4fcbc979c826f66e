"""Bad configuration is a clear, structured error naming the setting: the runner refuses to start (exit 2), the
functions answer every request with the error shape instead of a stack trace."""

import flask

import functions.main as functions_main
from gpu_runner.__main__ import main as runner_main


def test_runner_refuses_bad_settings_by_name(monkeypatch, capsys):
    monkeypatch.setenv("FORCE_CPU", "maybe")
    monkeypatch.setenv("DEVICE_MEMORY_FRACTION", "3")
    assert runner_main(["--burst"]) == 2
    err = capsys.readouterr().err
    assert "FORCE_CPU" in err and "DEVICE_MEMORY_FRACTION" in err and "Traceback" not in err


def test_functions_answer_misconfiguration_in_the_error_shape(monkeypatch):
    monkeypatch.setenv("SOUL_SIGNED_URL_TTL_S", "5")
    monkeypatch.setattr(functions_main, "_api", None)
    app = flask.Flask("misconfigured")
    with app.test_request_context("/image?soul_id=nova&cue=penguin&user_id=u"):
        response = functions_main.api(flask.request)
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error["code"] == "internal" and "signed_url_ttl_s" in error["message"]
    assert functions_main._api is None  # nothing half-built is kept: a fixed environment is picked up


def test_a_webhook_backoff_past_the_retry_push_deadline_is_refused(monkeypatch):
    """A retry push waits until its attempt is due, at most the backoff's maximum, then makes it: both must fit in
    the ack deadline of soul-webhook-retries (soul_common/delivery.py), or Pub/Sub pushes the retry again. The
    retry budget itself is bounded by nothing but the caller's patience: it spans many pushes."""
    import pytest
    from pydantic import ValidationError

    from functions.settings import FunctionsSettings

    monkeypatch.setenv("SOUL_WEBHOOK_BACKOFF_MAX_S", "58")
    with pytest.raises(ValidationError, match="soul-webhook-retries-push"):
        FunctionsSettings()
    monkeypatch.setenv("SOUL_WEBHOOK_BACKOFF_MAX_S", "45")
    monkeypatch.setenv("SOUL_WEBHOOK_RETRY_BUDGET_S", "3600")
    settings = FunctionsSettings()
    assert settings.webhook_backoff_max_s == 45 and settings.webhook_retry_budget_s == 3600