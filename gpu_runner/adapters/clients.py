"""The runner's cloud clients, created once at the entry point (never at import time). The client libraries
read PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST and STORAGE_EMULATOR_HOST themselves; storage needs anonymous
credentials on the emulator."""

from __future__ import annotations

import os
from dataclasses import dataclass

from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage

from gpu_runner.settings import RunnerSettings


@dataclass(frozen=True)
class RunnerClients:
    firestore: firestore.Client
    subscriber: pubsub_v1.SubscriberClient
    publisher: pubsub_v1.PublisherClient
    storage: storage.Client


def make_clients(settings: RunnerSettings) -> RunnerClients:
    # The client libraries read the *_EMULATOR_HOST variables themselves; storage needs anonymous credentials.
    on_emulator = bool(os.environ.get("STORAGE_EMULATOR_HOST"))
    gcs_credentials = AnonymousCredentials() if on_emulator else None
    return RunnerClients(
        firestore=firestore.Client(project=settings.project_id),
        subscriber=pubsub_v1.SubscriberClient(),
        publisher=pubsub_v1.PublisherClient(),
        storage=storage.Client(project=settings.project_id, credentials=gcs_credentials),
    )
