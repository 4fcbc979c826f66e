"""A stalled backend (accepts connections, never answers) turns into a retryable error within the runner's
deadline, not minutes of the client's default retries: the job is then released and its message nacked."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage

from gpu_runner.errors import Disposition, disposition
from soul_common.firestore import Db
from gpu_runner.adapters.jobstore import JobStore
from gpu_runner.adapters.storage import MediaStore

DEADLINE_S = 1.0


@pytest.fixture
def stalled_host():
    """A TCP endpoint whose kernel accepts connections that nobody ever reads or answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def fails_fast(call) -> BaseException:
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        call()
    assert time.monotonic() - started < DEADLINE_S * 6, "the call outlived its deadline"
    return caught.value


def test_a_stalled_firestore_fails_within_the_deadline_as_a_retry(stalled_host, monkeypatch):
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", stalled_host)
    store = JobStore(Db(firestore.Client(project="soul-test"), timeout_s=DEADLINE_S), "r", timedelta(seconds=30))
    error = fails_fast(lambda: store.claim("img-" + "0" * 32 + "-0", "image"))
    assert disposition(error) is Disposition.RETRY


def test_a_stalled_gcs_fails_within_the_deadline_as_a_retry(stalled_host, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{stalled_host}")
    client = storage.Client(project="soul-test", credentials=AnonymousCredentials())
    media = MediaStore(client, "soul-test-media", timeout_s=DEADLINE_S)
    error = fails_fast(lambda: media.put_once("images/x.png", b"png", "image/png"))
    assert disposition(error) is Disposition.RETRY
