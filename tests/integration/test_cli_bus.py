"""The `soul` CLI's Pub/Sub commands against the real Pub/Sub emulator (`emulator_stack` provisions the topics
and subscriptions and puts PUBSUB_EMULATOR_HOST and GCS_PROJECT_ID in the environment, which the CLI reads as a
user's shell would): tailing soul-events, and listing and replaying dead-lettered job messages. One test also
runs the HTTP commands against the real `api` function served on a local port, so the CLI and the API are
checked against each other and not only against the contract models."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator

import pytest
import requests
from google.cloud import pubsub_v1
from typer.testing import CliRunner
from werkzeug.serving import make_server

from schemas import names
from schemas._base import utcnow
from schemas.jobs import JobEvent, JobRequested
from soul_cli.errors import ExitCode
from soul_cli.main import app
from tests.support import pull_all

JOB_ID = "img-" + "e" * 32 + "-0"


@pytest.fixture(scope="module")
def publisher(emulator_stack) -> Iterator[pubsub_v1.PublisherClient]:
    client = pubsub_v1.PublisherClient()
    yield client
    client.stop()
    client.transport.close()


@pytest.fixture
def empty(subscriber) -> None:
    """Each test starts with nothing on the subscriptions it looks at."""
    for subscription in (names.SUB_EVENTS, names.SUB_JOBS_DEAD_LETTER, names.SUB_RUNNER):
        pull_all(subscriber, subscription, rounds=1)


def publish(publisher, topic: str, data: bytes, **attributes: str) -> str:
    path = publisher.topic_path(os.environ["GCS_PROJECT_ID"], topic)
    return publisher.publish(path, data, **attributes).result(timeout=10)


def soul(*args: str, **kwargs):
    return CliRunner().invoke(app, list(args), **kwargs)


def _job_event(status: str = "succeeded") -> tuple[bytes, dict[str, str]]:
    """A completion event as the runner publishes it: a CloudEvent in binary mode."""
    event = JobEvent(job_id=JOB_ID, type="image", status=status, soul_id="nova", occurred_at=utcnow())
    attributes = {"ce-specversion": "1.0", "ce-type": f"soul.job.{status}", "ce-source": names.EVENT_SOURCE_RUNNER,
                  "ce-id": JOB_ID, "ce-time": event.occurred_at.isoformat(), "content-type": "application/json"}
    return event.model_dump_json().encode(), attributes


# ---- events -----------------------------------------------------------------------------------------------------


def test_events_prints_one_line_per_event_and_acks_it(publisher, subscriber, empty):
    data, attributes = _job_event("failed")
    publish(publisher, names.TOPIC_EVENTS, data, **attributes)

    result = soul("events", "--no-follow")

    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == f"{attributes['ce-time']}  soul.job.failed  {JOB_ID}  failed\n"
    assert pull_all(subscriber, names.SUB_EVENTS) == []  # acked


def test_events_json_prints_the_raw_message_and_max_stops(publisher, empty):
    data, attributes = _job_event()
    for _ in range(3):
        publish(publisher, names.TOPIC_EVENTS, data, **attributes)

    result = soul("events", "--no-follow", "--json", "--max", "2")

    assert result.exit_code == ExitCode.OK, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert lines[0]["attributes"] == attributes
    assert lines[0]["data"] == json.loads(data)


def test_a_missing_subscription_is_a_clean_error(emulator_stack):
    result = soul("--project", "no-such-project", "events", "--no-follow")

    assert result.exit_code == ExitCode.ERROR
    assert "does not exist" in result.stderr and "no-such-project" in result.stderr
    assert "Traceback" not in result.output


# ---- dead letters -----------------------------------------------------------------------------------------------

VALID = JobRequested(job_id=JOB_ID, type="image").model_dump_json().encode()
JOB_ATTRIBUTES = {"job_id": JOB_ID, "type": "image", "schema_version": "1"}
INVALID = b'{"job_id": "not-a-job"}'


@pytest.fixture
def parked(publisher, empty) -> None:
    """A valid job message the runner parked with its reason, and an invalid one, on the dead-letter topic."""
    publish(publisher, names.TOPIC_JOBS_DEAD_LETTER, VALID, **JOB_ATTRIBUTES,
            **{"soul-dead-letter-reason": "Firestore unavailable"})
    publish(publisher, names.TOPIC_JOBS_DEAD_LETTER, INVALID, **{"soul-dead-letter-reason": "not a JobRequested"})


def test_dead_letters_list_shows_them_and_leaves_them_in_place(parked, subscriber):
    result = soul("dead-letters", "list", "--json")

    assert result.exit_code == ExitCode.OK, result.output
    shown = {line["data"]["job_id"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert shown[JOB_ID]["attributes"]["soul-dead-letter-reason"] == "Firestore unavailable"
    assert shown[JOB_ID]["replayable"] is True
    assert shown["not-a-job"]["replayable"] is False and "job_id" in shown["not-a-job"]["problem"]
    assert sorted(m.message.data for m in pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER)) == sorted([VALID, INVALID])


def test_replay_moves_only_the_valid_message_onto_soul_jobs(parked, subscriber):
    result = soul("dead-letters", "replay", "--yes")

    assert result.exit_code == ExitCode.OK, result.output
    assert f"replayed {JOB_ID} (image)" in result.stdout
    assert "left " in result.stderr and "not a JobRequested" in result.stderr
    [replayed] = pull_all(subscriber, names.SUB_RUNNER)
    assert replayed.message.data == VALID
    assert dict(replayed.message.attributes) == JOB_ATTRIBUTES  # the dead-letter note is gone
    [left] = pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER)
    assert left.message.data == INVALID


def test_replay_asks_first_and_declining_moves_nothing(parked, subscriber):
    result = soul("dead-letters", "replay", input="n\n")

    assert result.exit_code == 1  # click's "Aborted!"
    assert pull_all(subscriber, names.SUB_RUNNER) == []
    assert len(pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER)) == 2


# ---- the HTTP commands against the real api function ---------------------------------------------------------


@pytest.fixture
def api_url(api_app, clean_firestore, empty) -> Iterator[str]:
    """The real `api` function (pointed at the emulators) on a free local port."""
    server = make_server("127.0.0.1", 0, api_app, threaded=True)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    # The function configures its logger on its first request, with the sys.stderr of that moment: make that
    # moment now, not inside CliRunner, whose swapped streams are closed after each invocation.
    requests.get(f"{url}/healthz", timeout=30)
    yield url
    server.shutdown()


def test_with_the_real_api_a_queued_image_is_listed_canceled_and_announced(api_url):
    env = {"SOUL_API_URL": api_url, "SOUL_API_KEY": None}

    queued = soul("image", "nova", "penguin", "--user", "user123", "--no-wait", env=env)
    assert queued.exit_code == ExitCode.OK, queued.output
    task_id = queued.stdout.strip()
    shown = soul("task", task_id, "--json", env=env)
    assert json.loads(shown.stdout)["status"] == "queued"
    listed = soul("tasks", "--soul", "nova", "--status", "queued", "--json", env=env)
    assert [json.loads(line)["task_id"] for line in listed.stdout.splitlines()] == [task_id]

    canceled = soul("cancel", task_id, env=env)
    assert canceled.exit_code == ExitCode.OK and canceled.stdout == f"canceled {task_id}\n"
    again = soul("cancel", task_id, env=env)
    assert again.exit_code == ExitCode.ERROR and "[conflict, HTTP 409]" in again.stderr
    refused = soul("image", "nova", "penguin", "--user", "not a user id", env=env)
    assert refused.exit_code == ExitCode.ERROR and "(field: user_id)" in refused.stderr

    tailed = soul("events", "--no-follow")
    assert f"soul.job.canceled  {task_id}  canceled" in tailed.stdout
