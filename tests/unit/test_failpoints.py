"""Failpoints: the spec parser, the settings that carry it, and a seeded firing sequence that replays."""

import re

import pytest
from pydantic import ValidationError

from gpu_runner import failpoints
from gpu_runner.failpoints import Failpoints, parse
from gpu_runner.settings import RunnerSettings


def test_parse_reads_names_and_probabilities():
    assert parse("") == {}
    assert parse(" mid_render:0.05 , after_upload:1,") == {"mid_render": 0.05, "after_upload": 1.0}
    assert set(parse(",".join(f"{name}:0" for name in failpoints.NAMES))) == failpoints.NAMES


@pytest.mark.parametrize(
    ("spec", "says"),
    [("mid_render", "name:probability"), ("explode:1", "unknown failpoint"), ("mid_render:x", "not a number"),
     ("mid_render:1.5", "not in [0, 1]"), ("mid_render:-0.1", "not in [0, 1]"),
     ("after_event:1,after_event:0", "twice")],
)
def test_parse_refuses_bad_specs(spec, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        parse(spec)


def test_settings_carry_and_check_the_spec(monkeypatch):
    monkeypatch.setenv("SOUL_FAILPOINTS", "after_upload:1")
    monkeypatch.setenv("SOUL_FAILPOINT_SEED", "7")
    settings = RunnerSettings()
    assert settings.failpoints == "after_upload:1" and settings.failpoint_seed == 7
    monkeypatch.setenv("SOUL_FAILPOINTS", "after_uplaod:1")
    with pytest.raises(ValidationError, match="unknown failpoint"):
        RunnerSettings()


def test_a_point_fires_by_its_probability_and_a_seed_replays():
    killed: list[str] = []
    always = Failpoints({"after_upload": 1.0}, kill=lambda: killed.append("x"))
    always.hit(failpoints.AFTER_UPLOAD)
    always.hit(failpoints.AFTER_EVENT)  # not configured: never fires
    assert killed == ["x"]

    def sequence(seed):
        points = Failpoints({"mid_render": 0.3}, seed=seed, kill=lambda: None)
        return [points.should_fire(failpoints.MID_RENDER) for _ in range(200)]

    assert sequence(11) == sequence(11)
    assert 30 < sum(sequence(11)) < 90
    assert not any(Failpoints({"mid_render": 0.0}).should_fire(failpoints.MID_RENDER) for _ in range(100))
    with pytest.raises(AssertionError):
        always.should_fire("no_such_point")
