"""Creates the cloud clients of the functions, once per process, at the entry point (never at import time).

The same code talks to real GCP or to the local stand-ins: the client libraries read PUBSUB_EMULATOR_HOST,
FIRESTORE_EMULATOR_HOST and STORAGE_EMULATOR_HOST themselves; storage needs anonymous credentials there."""

from __future__ import annotations

import os
from dataclasses import dataclass

from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage


@dataclass(frozen=True)
class Clients:
    firestore: firestore.Client
    publisher: pubsub_v1.PublisherClient
    storage: storage.Client


def make_clients(project_id: str) -> Clients:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        gcs = storage.Client(project=project_id, credentials=AnonymousCredentials())
    else:
        gcs = storage.Client(project=project_id)
    return Clients(
        firestore=firestore.Client(project=project_id),
        publisher=pubsub_v1.PublisherClient(),
        storage=gcs,
    )
