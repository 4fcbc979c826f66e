"""One source for Pub/Sub's delivery facts (soul_common/delivery.py): the Terraform deploys the same ack deadlines,
attempts and backoffs, the emulators are provisioned from the table, and the windows derive from it."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from schemas import names
from soul_common import delivery
from soul_common.delivery import LANES, POLICIES, DeliveryPolicy

TERRAFORM = Path(__file__).resolve().parents[2] / "infra" / "terraform"


def _blocks(text: str, kind: str) -> dict[str, str]:
    """The bodies of `resource "<kind>" "<name>" { ... }` blocks by name (braces matched)."""
    found = {}
    for match in re.finditer(rf'resource\s+"{kind}"\s+"([a-z0-9_]+)"\s*\{{', text):
        depth, i = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        found[match.group(1)] = text[match.end():i - 1]
    return found


def _locals() -> dict[str, str]:
    main = (TERRAFORM / "main.tf").read_text()
    return dict(re.findall(r'^\s*([a-z_]+)\s*=\s*"?([A-Za-z0-9_-]+)"?', main, re.MULTILINE))


def _value(body: str, key: str) -> str | None:
    match = re.search(rf'^\s*{key}\s*=\s*"?([^"\s#]+)"?', body, re.MULTILINE)
    return match.group(1) if match else None


def _for_each_entries(text: str, local_name: str) -> list[dict[str, str]]:
    """The entries of `locals { <local_name> = { key = { subscription = ..., topic = ..., ... } } }`."""
    match = re.search(rf"^\s*{local_name}\s*=\s*\{{", text, re.MULTILINE)
    assert match, local_name
    depth, i = 1, match.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    entries = []
    for body in re.findall(r"=\s*\{([^{}]*)\}", text[match.end():i - 1]):
        entries.append(dict(re.findall(r"([a-z_]+)\s*=\s*([A-Za-z0-9_.\[\]\"]+)", body)))
    return entries


def _deployed() -> dict[str, DeliveryPolicy]:
    """The subscriptions Terraform declares, as DeliveryPolicy records (a `for_each` over a local map of
    `subscription`, `topic` and an optional `ack_deadline` included)."""
    local = _locals()
    text = (TERRAFORM / "pubsub.tf").read_text()
    topics = {name: local[_value(body, "name").removeprefix("local.")]
              for name, body in _blocks(text, "google_pubsub_topic").items()}

    def topic_of(reference: str) -> str:
        return topics[reference.removeprefix("google_pubsub_topic.").removesuffix(".id")]

    deployed = {}
    for body in _blocks(text, "google_pubsub_subscription").values():
        each = re.search(r"for_each = local\.([a-z_]+)", body)
        if each:
            pairs = [(local[e["subscription"].removeprefix("local.")], topic_of(e["topic"]), e.get("ack_deadline"))
                     for e in _for_each_entries(text, each.group(1))]
        else:
            pairs = [(local[_value(body, "name").removeprefix("local.")], topic_of(_value(body, "topic")), None)]
        attempts = _value(body, "max_delivery_attempts")
        backoffs = [_value(body, "minimum_backoff"), _value(body, "maximum_backoff")]
        for sub, topic, ack_deadline in pairs:
            deployed[sub] = DeliveryPolicy(
                subscription=sub, topic=topic,
                ack_deadline_s=int(ack_deadline or _value(body, "ack_deadline_seconds") or 10),
                max_attempts=int(local["max_delivery_attempts"]) if attempts else None,
                min_backoff_s=float(backoffs[0].removesuffix("s")) if backoffs[0] else None,
                max_backoff_s=float(backoffs[1].removesuffix("s")) if backoffs[1] else None,
                push="push_config" in body,
            )
    return deployed


def test_terraform_deploys_the_delivery_table():
    deployed = _deployed()
    for subscription, expected in POLICIES.items():
        assert deployed.get(subscription) == expected, subscription
    assert int(_locals()["max_delivery_attempts"]) == names.MAX_DELIVERY_ATTEMPTS


def test_the_webhooks_function_outlives_its_push_deadline():
    functions = (TERRAFORM / "functions.tf").read_text()
    body = _blocks(functions, "google_cloudfunctions2_function")["webhooks"]
    assert int(_value(body, "timeout_seconds")) >= delivery.policy(names.SUB_EVENTS_WEBHOOKS).ack_deadline_s


def test_every_lane_has_a_policy_and_a_topic():
    for lane in LANES:
        assert delivery.topic_of(lane.lane) == POLICIES[lane.subscription].topic
        assert POLICIES[lane.subscription].max_attempts == names.MAX_DELIVERY_ATTEMPTS


@pytest.mark.parametrize(("policy", "window"), [
    (DeliveryPolicy("s", "t", 60, 5, 10.0, 600.0), 60 * 5 + 10 + 20 + 40 + 80),
    (DeliveryPolicy("s", "t", 60, 5, 30.0, 30.0), 60 * 5 + 4 * 30),
    (DeliveryPolicy("s", "t", 60, 5), 60 * 5),  # no retry policy: redelivered at once
    (DeliveryPolicy("s", "t", 10, 3, 100.0, 150.0), 10 * 3 + 100 + 150),
])
def test_redelivery_window_is_every_attempt_held_plus_the_backoffs_between(policy, window):
    assert policy.redelivery_window() == timedelta(seconds=window)
