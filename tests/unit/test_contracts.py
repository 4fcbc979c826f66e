"""Contract rules: requests refuse unknown fields (a typo is an error, not a silent default); replies tolerate them
(a client built against an older API keeps working when the API adds a field)."""

import pytest
from pydantic import ValidationError

from schemas.api import ImageRequest, Task
from schemas.jobs import JobRequested

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
