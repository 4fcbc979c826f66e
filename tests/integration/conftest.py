"""Fixtures for tests of the functions and the runner against the emulators (started by `emulator_stack`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.cloud import pubsub_v1

from schemas import names
from tests.support import pull_all

REPO = Path(__file__).resolve().parents[2]


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
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.fixture
def drain_jobs(subscriber):
    """Start each test with empty job and event subscriptions."""
    pull_all(subscriber, names.SUB_RUNNER, rounds=1)
    pull_all(subscriber, names.SUB_EVENTS, rounds=1)
    pull_all(subscriber, names.SUB_JOBS_DEAD_LETTER, rounds=1)
