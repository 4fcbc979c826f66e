"""Contract rules: requests refuse unknown fields (a typo is an error, not a silent default); replies tolerate them
(a client built against an older API keeps working when the API adds a field)."""

import pytest
from pydantic import ValidationError

from functions.core import errors
from functions.core.validation import parse
from schemas.api import EstimateQuery, ImageRequest, Task, VideoFromVariantQuery
from schemas.jobs import JobRequested

VARIANT = "01J" + "0" * 23
TASK = {"task_id": "img-" + "0" * 32 + "-0", "type": "image", "status": "queued", "progress": 0.0, "stage": "queued",
        "created_at": "2026-11-24T00:00:00Z", "actions": {"self": "/tasks/x"}}


def test_requests_and_messages_refuse_unknown_fields():
    with pytest.raises(ValidationError, match="extra"):
        ImageRequest.model_validate({"soul_id": "nova", "cue": "penguin", "user_id": "u", "cue2": "x"})
    with pytest.raises(ValidationError):
        JobRequested.model_validate({"job_id": TASK["task_id"], "type": "image", "priority": 1})


def test_replies_tolerate_fields_added_later():
    task = Task.model_validate({**TASK, "shard_hint": 3})  # a field this version does not know
    assert task.task_id == TASK["task_id"] and not hasattr(task, "shard_hint")


def test_contracts_are_frozen():
    task = Task.model_validate(TASK)
    with pytest.raises(ValidationError):
        task.status = "running"


@pytest.mark.parametrize("raw", [" 10", "10 ", "+10", "1_0", "10.0", "1e1"])
def test_a_query_integer_is_written_as_digits_only(raw):
    """`?num_frames=1_0` or `+10` is a typo or a probe, not 10: query integers are ASCII digits with an optional
    minus, as the OpenAPI document's `type: integer` says, so two spellings never name one request."""
    with pytest.raises(errors.InvalidInput) as caught:
        parse(EstimateQuery, {"num_frames": raw})
    assert caught.value.field == "num_frames" and "digits" in str(caught.value)
    assert parse(EstimateQuery, {"num_frames": "10"}).num_frames == 10


@pytest.mark.parametrize("raw", ["yes", "on", "t", "y", " true"])
def test_a_query_boolean_is_true_or_false(raw):
    with pytest.raises(errors.InvalidInput) as caught:
        parse(VideoFromVariantQuery, {"variant_id": VARIANT, "generate_gif": raw})
    assert caught.value.field == "generate_gif"
    for spelled, value in (("true", True), ("false", False), ("1", True), ("0", False)):
        assert parse(VideoFromVariantQuery, {"variant_id": VARIANT, "generate_gif": spelled}).generate_gif is value
