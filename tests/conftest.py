"""Shared fixtures. The emulator stack is started lazily, once per session, and only when a test asks for
`emulator_stack` (or `clean_firestore`): unit tests never pay for the JVMs, nor for importing the cloud clients."""

from __future__ import annotations

import signal
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Index coverage: every query shape the suite runs is checked against infra/terraform/firestore.tf at the end.
from tests.index_coverage import pytest_configure, pytest_sessionfinish, pytest_terminal_summary  # noqa: F401

if TYPE_CHECKING:
    from emulators import EmulatorStack


@pytest.fixture(scope="session")
def emulator_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorStack]:
    """The Pub/Sub and Firestore emulators and fake-gcs-server on free ports, provisioned, with their client
    environment in os.environ for the session (restored afterwards). Redelivery backoffs are zero (no retry
    policy, immediate redelivery) so a message dead-letters in a fraction of a second; the emulator rounds any
    real retry policy up to ~2 s steps. The production policy is checked on a stack started by the CLI."""
    from emulators import EmulatorStack, StackConfig

    config = StackConfig(
        state_dir=tmp_path_factory.mktemp("emulators"),
        retry_min_backoff_s=0.0,
        retry_max_backoff_s=0.0,
    )
    stack = EmulatorStack(config)
    # The stand-ins run in process groups of their own and would outlive a pytest killed by SIGTERM (a CI
    # timeout, `timeout`): turn SIGTERM into the KeyboardInterrupt that makes pytest run its teardowns.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    stack.start()
    try:
        stack.provision()
        with pytest.MonkeyPatch.context() as patch:
            for key, value in stack.env().items():
                patch.setenv(key, value)
            yield stack
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)


def _track_memos() -> weakref.WeakSet:
    """Every instance cache of Firestore reads (functions/core/memo.py) made in this process, so a wiped database
    takes them along: the session's api instance would otherwise serve a style an earlier test wrote."""
    from functions.core.memo import RefreshingMemo

    memos: weakref.WeakSet = weakref.WeakSet()
    original = RefreshingMemo.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        memos.add(self)

    RefreshingMemo.__init__ = init
    return memos


_MEMOS = _track_memos()


@pytest.fixture
def clean_firestore(emulator_stack: EmulatorStack) -> Iterator[None]:
    """An empty Firestore emulator database for this test (and no instance cache of what was there)."""
    emulator_stack.reset_firestore()
    for memo in list(_MEMOS):
        memo.clear()
    yield


# ---- the api function and clean state for tests against the emulators ----------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def api_app(emulator_stack):
    """The real `api` function, loaded by functions-framework in-process, pointed at the emulators."""
    from functions_framework import create_app

    return create_app(target="api", source=str(REPO / "functions" / "main.py"))


@pytest.fixture
def clean_bucket(emulator_stack):
    """Start a test with an empty bucket (fake-gcs-server keeps objects for the whole session)."""
    import os

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=os.environ["GCS_PROJECT_ID"], credentials=AnonymousCredentials())
    for blob in client.bucket(os.environ["GCS_BUCKET_NAME"]).list_blobs():
        blob.delete()


@pytest.fixture
def api(api_app, clean_firestore, clean_bucket, drain_jobs):
    return api_app.test_client()


@pytest.fixture(scope="session")
def subscriber(emulator_stack):
    from google.cloud import pubsub_v1

    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.fixture
def drain_jobs(subscriber):
    """Start each test with empty job (every lane) and event subscriptions: a message a previous test left on
    the background lane would otherwise be the next runner's first."""
    from schemas import names
    from tests.support import pull_all

    # A pull with return_immediately may come back empty while messages wait: ask a few times.
    pull_all(subscriber, names.SUB_RUNNER, rounds=3)
    pull_all(subscriber, names.SUB_RUNNER_BACKGROUND, rounds=3)
    pull_all(subscriber, names.SUB_EVENTS, rounds=3)
    pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER, rounds=3)
