"""`EmulatorStack.restart_pubsub()`, the chaos suite's "Pub/Sub crashed" fault: the backlog is gone, the port is
the same, the topics and subscriptions are back, and clients that were connected carry on."""

from __future__ import annotations

import os

from google.cloud import pubsub_v1

from schemas import names
from tests.support import pull_all


def test_restart_loses_the_backlog_keeps_the_port_and_reprovisions(emulator_stack, subscriber):
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(os.environ["GCS_PROJECT_ID"], names.TOPIC_JOBS)
    pull_all(subscriber, names.SUB_RUNNER)
    publisher.publish(topic, b"before").result(30)
    port = emulator_stack.ports.pubsub
    emulator_stack.restart_pubsub()
    assert emulator_stack.ports.pubsub == port
    assert pull_all(subscriber, names.SUB_RUNNER) == []  # the backlog went with the crash
    publisher.publish(topic, b"after").result(30)  # same clients, reconnected
    assert [m.message.data for m in pull_all(subscriber, names.SUB_RUNNER)] == [b"after"]
