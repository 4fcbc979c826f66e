"""soul-requests (the `ingest` function) against the emulators: a publisher's `request_id` is an idempotency key,
as `Idempotency-Key` is over HTTP. The same id and body are served once and answered alike (the same outcome
event, which consumers drop as a duplicate); the same id with another body is rejected under an event id of its
own, so the first answer is never taken for its duplicate."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace

import pytest
from google.cloud import firestore

from functions.services.ingest import handle_message
from schemas import names
from tests.support import api_client_with


class Recording:
    """The services' publisher, recording each outcome event it publishes."""

    def __init__(self, publisher):
        self._publisher = publisher
        self.events: list[tuple[str, str, dict]] = []

    def publish_event(self, *, event_type: str, event_id: str, data: bytes, time_iso: str | None = None) -> str:
        self.events.append((event_type, event_id, json.loads(data)))
        return self._publisher.publish_event(event_type=event_type, event_id=event_id, data=data, time_iso=time_iso)

    def __getattr__(self, name):
        return getattr(self._publisher, name)


@pytest.fixture
def ingest(emulator_stack, clean_firestore, drain_jobs, monkeypatch):
    api, _ = api_client_with(monkeypatch, "ingest")
    recording = Recording(api.services.publisher)
    return replace(api.services, publisher=recording), recording


def message(body: dict, **attributes: str) -> dict:
    return {"attributes": {"type": "image", **attributes}, "data": base64.b64encode(json.dumps(body).encode()).decode()}


def jobs() -> list:
    return list(firestore.Client(project=os.environ["GCS_PROJECT_ID"]).collection(names.JOBS).stream())


def test_a_request_id_serves_its_body_once_and_refuses_another_body(ingest):
    svc, recording = ingest
    first = handle_message(svc, message({"soul_id": "nova", "cue": "lighthouse", "user_id": "u1"},
                                        request_id="dup-1"), "m-1")
    again = handle_message(svc, message({"soul_id": "nova", "cue": "lighthouse", "user_id": "u1"},
                                        request_id="dup-1"), "m-2")  # the publisher retried
    other = handle_message(svc, message({"soul_id": "nova", "cue": "harbour", "user_id": "u1"},
                                        request_id="dup-1"), "m-3")
    assert first.accepted and again.accepted and again.answer == first.answer
    assert not other.accepted and other.error.code == "idempotency_key_reused" and other.error.field == "request_id"
    assert len(jobs()) == 1  # the other body made no job
    [(kind1, id1, _), (kind2, id2, _), (kind3, id3, data3)] = recording.events
    assert (kind1, kind2, kind3) == (names.EVENT_REQUEST_ACCEPTED, names.EVENT_REQUEST_ACCEPTED,
                                     names.EVENT_REQUEST_REJECTED)
    assert id1 == id2 == "dup-1" and id3 != "dup-1" and data3["request_id"] == "dup-1"


def test_without_a_request_id_each_message_is_its_own_request(ingest):
    svc, recording = ingest
    body = {"soul_id": "nova", "cue": "lighthouse", "user_id": "u1"}
    assert handle_message(svc, message(body), "m-1").accepted and handle_message(svc, message(body), "m-2").accepted
    assert [event_id for _, event_id, _ in recording.events] == ["m-1", "m-2"]
