"""The local stand-ins behave as the pipeline relies on: the runner's subscription delivers and dead-letters
after bounded attempts, GCS uploads are create-only, V4 signed URLs download, Firestore resets, and stopping
(in-process or through the CLI) leaves no process behind. Everything runs against the real emulators."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage
from google.oauth2 import service_account

from emulators import EmulatorError, EmulatorStack, StackConfig
from schemas import names

REPO_ROOT = Path(__file__).resolve().parents[2]
# The tests pull with return_immediately: deprecated in the service, but it spares the emulator's ~9 s wait.
pytestmark = pytest.mark.filterwarnings("ignore:The return_immediately flag is deprecated:DeprecationWarning")


# --- helpers ----------------------------------------------------------------------------------------------------


def _publish(project: str, topic: str, data: bytes) -> str:
    publisher = pubsub_v1.PublisherClient()  # PUBSUB_EMULATOR_HOST comes from the emulator_stack fixture
    try:
        return publisher.publish(publisher.topic_path(project, topic), data).result(timeout=10)
    finally:
        publisher.stop()


def _pull(subscriber, subscription: str, wanted: bytes):
    """The delivery of the message with data `wanted` among those due now, or None; others are left alone."""
    response = subscriber.pull(
        request={"subscription": subscription, "max_messages": 10, "return_immediately": True}, timeout=10
    )
    return next((r for r in response.received_messages if r.message.data == wanted), None)


def _pull_until(subscriber, subscription: str, wanted: bytes, timeout_s: float = 10.0, also_pull: str | None = None):
    """The next delivery of `wanted` on `subscription`. With `also_pull`, that subscription is pulled in
    between and must not deliver `wanted`: the emulator moves a message to its dead-letter topic only when
    its source subscription is pulled again, as a running consumer would."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        received = _pull(subscriber, subscription, wanted)
        if received is not None:
            return received
        if also_pull is not None:
            assert _pull(subscriber, also_pull, wanted) is None, f"{wanted!r} delivered again on {also_pull}"
        time.sleep(0.02)
    raise AssertionError(f"{wanted!r} not delivered on {subscription} within {timeout_s} s")


def _live_pids(pids: list[int]) -> list[int]:
    """Those of `pids` that still exist and are not zombies."""
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            alive.append(pid)
    return alive


def _group_pids(pgid: int) -> list[int]:
    return [
        int(entry.name) for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _pgid_of(int(entry.name)) == pgid
    ]


def _pgid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[2])


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


# --- Pub/Sub ----------------------------------------------------------------------------------------------------


def test_runner_subscription_has_the_delivery_policy(emulator_stack: EmulatorStack) -> None:
    project = emulator_stack.config.project_id
    with pubsub_v1.SubscriberClient() as subscriber:
        path = subscriber.subscription_path(project, names.SUB_RUNNER)
        sub = subscriber.get_subscription(request={"subscription": path})
    assert sub.topic.endswith(f"/topics/{names.TOPIC_JOBS}")
    assert sub.ack_deadline_seconds == 60
    assert sub.dead_letter_policy.dead_letter_topic.endswith(f"/topics/{names.TOPIC_JOBS_DEAD_LETTER}")
    assert sub.dead_letter_policy.max_delivery_attempts == names.MAX_DELIVERY_ATTEMPTS
    assert sub.enable_exactly_once_delivery


def test_job_published_to_soul_jobs_reaches_the_runner(emulator_stack: EmulatorStack) -> None:
    project = emulator_stack.config.project_id
    data = f"job-{uuid.uuid4()}".encode()
    _publish(project, names.TOPIC_JOBS, data)
    with pubsub_v1.SubscriberClient() as subscriber:
        path = subscriber.subscription_path(project, names.SUB_RUNNER)
        received = _pull_until(subscriber, path, data)
        assert received.delivery_attempt == 1
        subscriber.acknowledge(request={"subscription": path, "ack_ids": [received.ack_id]})


def test_message_nacked_max_attempts_times_goes_to_dead_letter(emulator_stack: EmulatorStack) -> None:
    project = emulator_stack.config.project_id
    data = f"poison-{uuid.uuid4()}".encode()
    _publish(project, names.TOPIC_JOBS, data)
    attempts = []
    with pubsub_v1.SubscriberClient() as subscriber:
        runner = subscriber.subscription_path(project, names.SUB_RUNNER)
        for _ in range(names.MAX_DELIVERY_ATTEMPTS):
            received = _pull_until(subscriber, runner, data)
            attempts.append(received.delivery_attempt)
            # A nack: deadline 0 makes it due again at once (the fixture's subscription has no retry policy).
            subscriber.modify_ack_deadline(
                request={"subscription": runner, "ack_ids": [received.ack_id], "ack_deadline_seconds": 0}
            )
        dead_letter = subscriber.subscription_path(project, names.SUB_JOBS_DEAD_LETTER)
        dead = _pull_until(subscriber, dead_letter, data, also_pull=runner)
        subscriber.acknowledge(request={"subscription": dead_letter, "ack_ids": [dead.ack_id]})
    assert attempts == list(range(1, names.MAX_DELIVERY_ATTEMPTS + 1))


def test_provisioning_again_is_idempotent_and_adds_the_push_subscription(emulator_stack: EmulatorStack) -> None:
    project = emulator_stack.config.project_id
    emulator_stack.provision(push_endpoint="http://127.0.0.1:9/first")
    emulator_stack.provision(push_endpoint="http://127.0.0.1:9/moved")
    with pubsub_v1.SubscriberClient() as subscriber:
        sub = subscriber.get_subscription(
            request={"subscription": subscriber.subscription_path(project, names.SUB_REQUESTS_PUSH)}
        )
    assert sub.topic.endswith(f"/topics/{names.TOPIC_REQUESTS}")
    assert sub.push_config.push_endpoint == "http://127.0.0.1:9/moved"


# --- GCS --------------------------------------------------------------------------------------------------------


def _bucket(stack: EmulatorStack) -> storage.Bucket:
    client = storage.Client(project=stack.config.project_id, credentials=AnonymousCredentials())
    return client.bucket(stack.config.bucket)


def test_create_only_upload_refuses_a_second_write(emulator_stack: EmulatorStack) -> None:
    blob = _bucket(emulator_stack).blob(names.image_object("nova", "pk-create-only", str(uuid.uuid4())))
    blob.upload_from_string(b"first", content_type="image/png", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed):
        blob.upload_from_string(b"second", content_type="image/png", if_generation_match=0)
    assert blob.download_as_bytes() == b"first"


def test_v4_signed_url_downloads_the_object(emulator_stack: EmulatorStack) -> None:
    env = emulator_stack.env()
    blob = _bucket(emulator_stack).blob(names.image_object("nova", "pk-signed", str(uuid.uuid4())))
    blob.upload_from_string(b"\x89PNG signed", content_type="image/png", if_generation_match=0)

    key_file = Path(env["SOUL_SIGNING_KEY_FILE"])
    assert key_file.stat().st_mode & 0o077 == 0, "the private key must be owner-only"
    credentials = service_account.Credentials.from_service_account_file(str(key_file))
    assert credentials.service_account_email == f"soul-local@{emulator_stack.config.project_id}.iam.gserviceaccount.com"
    url = blob.generate_signed_url(
        version="v4", expiration=timedelta(minutes=15), credentials=credentials,
        api_access_endpoint=env["SOUL_SIGNED_URL_ENDPOINT"],
    )
    assert url.startswith(f"{env['SOUL_SIGNED_URL_ENDPOINT']}/{emulator_stack.config.bucket}/{blob.name}?")
    assert "X-Goog-Signature=" in url and "X-Goog-Credential=soul-local%40" in url

    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == b"\x89PNG signed"


# --- Firestore --------------------------------------------------------------------------------------------------


def test_reset_firestore_empties_the_database(emulator_stack: EmulatorStack, clean_firestore: None) -> None:
    db = firestore.Client(project=emulator_stack.config.project_id)
    job = db.collection(names.JOBS).document(f"job-{uuid.uuid4()}")
    job.create({"status": "queued"})
    with pytest.raises(gexc.Conflict):
        job.create({"status": "queued"})  # create() has exactly one winner: the contract dedup relies on
    emulator_stack.reset_firestore()
    assert not job.get().exists


# --- lifecycle --------------------------------------------------------------------------------------------------


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    stack = EmulatorStack(StackConfig(state_dir=tmp_path))
    stack.start()
    try:
        pgids = [record.pgid for record in stack.processes]
        # Include the JVM the Firestore launcher forks: it must go with its group.
        pids = [pid for pgid in pgids for pid in _group_pids(pgid)]
        assert len(pids) > len(pgids)
    finally:
        stack.stop()
    assert _live_pids(pids) == []
    assert all(_live_pids(_group_pids(pgid)) == [] for pgid in pgids)
    stack.stop()  # idempotent
    with pytest.raises(EmulatorError, match="not started"):
        stack.env()


def test_a_configured_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stack = EmulatorStack(StackConfig(state_dir=tmp_path, pubsub_port=taken.getsockname()[1]))
        with pytest.raises(EmulatorError, match="Pub/Sub port .* is not available"):
            stack.start()
    assert stack.processes == ()


def _script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def test_a_stand_in_that_dies_is_reported_with_its_log_and_the_rest_stopped(tmp_path: Path) -> None:
    # A fake SDK: Pub/Sub dies after half a second, by when "Firestore" runs, for a minute if let be.
    sdk, tag = tmp_path / "sdk", f"soul-test-firestore-{uuid.uuid4().hex}"
    _script(
        sdk / "platform/pubsub-emulator/bin/cloud-pubsub-emulator",
        "sleep 0.5; echo 'cannot start: out of coffee'; exit 3",
    )
    _script(
        sdk / "platform/cloud-firestore-emulator/cloud_firestore_emulator",
        f"touch {tmp_path}/firestore-ran; exec -a {tag} sleep 60",
    )
    stack = EmulatorStack(StackConfig(state_dir=tmp_path / "state", sdk_root=sdk, start_timeout_s=10))
    with pytest.raises(EmulatorError, match=r"(?s)pubsub exited with code 3 before it was ready.*out of coffee"):
        stack.start()
    assert stack.processes == ()
    assert (tmp_path / "firestore-ran").exists()
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and tag in _cmdline(p)]
    assert _live_pids([int(p.name) for p in leftovers]) == []


def _assert_production_retry_policy(target: str, project: str) -> None:
    from emulators.provision import subscriber_client

    subscriber = subscriber_client(target)
    try:
        path = subscriber.subscription_path(project, names.SUB_RUNNER)
        sub = subscriber.get_subscription(request={"subscription": path})
    finally:
        subscriber.close()
    assert sub.retry_policy.minimum_backoff == timedelta(seconds=1)
    assert sub.retry_policy.maximum_backoff == timedelta(seconds=30)


def test_cli_up_env_status_down(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "emulators", *args, "--state-dir", str(tmp_path)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )

    up = cli("up", "--project", "soul-cli")
    assert up.returncode == 0, up.stderr
    try:
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        assert exports["GOOGLE_CLOUD_PROJECT"] == "soul-cli"
        recorded = json.loads((tmp_path / "stack.json").read_text())
        assert recorded["env"] == exports
        # The processes outlived the CLI that started them.
        assert requests.get(f"http://{exports['PUBSUB_EMULATOR_HOST']}/", timeout=5).text.startswith("Ok")
        _assert_production_retry_policy(exports["PUBSUB_EMULATOR_HOST"], "soul-cli")
        assert cli("env").stdout == up.stdout
        assert cli("status").stdout.count(": up") == 3
        assert cli("up").returncode == 1  # refuses to start a second stack over the first
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "stack.json").exists()
    assert all(_live_pids(_group_pids(p["pgid"])) == [] for p in recorded["processes"])
    assert "nothing recorded" in cli("down").stdout


def test_down_leaves_alone_a_recorded_group_that_is_no_longer_ours(tmp_path: Path) -> None:
    from emulators.__main__ import main

    # A process group that reuses a recorded pgid but runs something else: `down` must not kill it.
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        record = {"name": "pubsub", "pid": stranger.pid, "pgid": stranger.pid, "marker": "cloud-pubsub-emulator",
                  "start_ticks": None, "log_path": str(tmp_path / "pubsub.log")}
        (tmp_path / "stack.json").write_text(json.dumps(
            {"project_id": "p", "bucket": "b", "ports": {}, "processes": [record], "env": {}}
        ))
        assert main(["down", "--state-dir", str(tmp_path)]) == 0
        assert stranger.poll() is None
        assert not (tmp_path / "stack.json").exists()
    finally:
        stranger.kill()
        stranger.wait()
