"""Issue 21's pure rules and small parts, on a CPU: the delivery table of every policy, blocked terms on the
normalized cue, the keys file's policy fields, the tiny checker's verdict steered by its threshold, the blurred
rendition, previews riding on the throttled progress write, and the linear latent->RGB preview."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from functions.core import content_policy as rules
from functions.core.content_policy import Delivery, Viewer
from functions.core.tenants import ConfigError, build_key_ring
from schemas.jobs import ImageJobSpec, JobPreview
from schemas.safety import ContentPolicy, SafetyVerdict

FLAGGED = SafetyVerdict(flagged=True, score=0.2, threshold=0.0, model="m", blurred_object="images/a/b/c.blurred.png")
CLEAN = SafetyVerdict(flagged=False, score=-0.4, threshold=0.0, model="m")


@pytest.mark.parametrize(("policy", "admin", "verdict", "expected"), [
    ("off", False, FLAGGED, Delivery.ORIGINAL),
    ("flag", False, FLAGGED, Delivery.ORIGINAL),
    ("blur", False, FLAGGED, Delivery.BLURRED),
    ("blur", True, FLAGGED, Delivery.BLURRED),  # admins get the original beside it, not instead
    ("withhold", False, FLAGGED, Delivery.WITHHELD),
    ("withhold", True, FLAGGED, Delivery.WITHHELD),
    ("blur", False, FLAGGED.model_copy(update={"blurred_object": None}), Delivery.WITHHELD),
    *((p, False, CLEAN, Delivery.ORIGINAL) for p in ContentPolicy),
    *((p, False, None, Delivery.ORIGINAL) for p in ContentPolicy),  # rendered before the checker
])
def test_delivery_table(policy, admin, verdict, expected):
    viewer = Viewer(policy=ContentPolicy(policy), admin=admin)
    assert rules.delivery(viewer, verdict) is expected
    assert rules.deliverable(viewer, verdict) is (expected is not Delivery.WITHHELD)


def test_previews_and_safety_facts_follow_the_policy():
    assert [p for p in ContentPolicy if rules.shows_previews(Viewer(policy=p))] == [ContentPolicy.OFF,
                                                                                    ContentPolicy.FLAG]
    assert [p for p in ContentPolicy if rules.shows_safety(Viewer(policy=p))] == [ContentPolicy.FLAG,
                                                                                  ContentPolicy.BLUR]


@pytest.mark.parametrize(("cue", "blocked"), [
    ("red wine at night", "red wine"), ("blood moon", "blood"), ("a blood", "blood"),
    ("bloodhound", None), ("red whine", None), ("wine red", None), ("redwine", None), ("penguin", None),
    # Inflected, accented, marked or spelled with look-alike letters of other scripts: the same word.
    ("bloods", "blood"), ("red wines", "red wine"), ("blóod", "blood"), ("blооd moon", "blood"),
    ("rеd wіne", "red wine"), ("BLOODİ", None), ("bloodiest", None), ("bloody", None),
])
def test_blocked_terms_match_whole_words_of_the_normalized_cue(cue, blocked):
    terms = rules.normalize_terms(["Red  Wine!", "BLOOD", "  ", "!!!"])
    assert terms == ("red wine", "blood")
    assert rules.blocked_term(cue, terms) == blocked


def test_the_keys_file_carries_each_tenants_policy_and_terms(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([
        {"tenant": "a", "key": "key-a-1", "content_policy": "withhold", "blocked_terms": ["x"]},
        {"tenant": "a", "key": "key-a-2", "blocked_terms": ["y"]},
        {"tenant": "b", "key": "key-b-1"},
    ]))
    ring = build_key_ring("", str(path))
    assert ring.content_policy("a") == ContentPolicy.WITHHOLD and ring.blocked_terms("a") == ("x", "y")
    assert ring.content_policy("b") is None and ring.content_policy("unknown") is None
    path.write_text(json.dumps([{"tenant": "a", "key": "k1", "content_policy": "blur"},
                                {"tenant": "a", "key": "k2", "content_policy": "off"}]))
    with pytest.raises(ConfigError, match="two different content policies"):
        build_key_ring("", str(path))
    path.write_text(json.dumps([{"tenant": "a", "key": "k1", "content_policy": "hide"}]))
    with pytest.raises(ConfigError, match="content_policy"):
        build_key_ring("", str(path))


def test_the_service_screens_with_the_deployments_and_the_tenants_terms(tmp_path):
    from functions.core.errors import ContentRefused
    from functions.services.content import ContentPolicies
    from functions.settings import FunctionsSettings

    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"tenant": "a", "key": "key-a-1", "blocked_terms": ["gore"]}]))
    policies = ContentPolicies(build_key_ring("", str(path)),
                               FunctionsSettings(content_policy="blur", blocked_terms="Knife, axe"))
    assert policies.policy("a") == ContentPolicy.BLUR  # the deployment's default
    for cue in ("gore", "a knife", "axe"):
        with pytest.raises(ContentRefused, match="policy 'blur'"):
            policies.screen("a", cue)
    policies.screen("b", "gore")  # not b's term
    with pytest.raises(ContentRefused):
        policies.screen("b", "knife")


# ---- runner side ------------------------------------------------------------------------------------------------

SPEC = ImageJobSpec(soul_id="nova", pk="a" * 32, variant_index=0, variant_id="01ARZ3NDEKTSV4RRFFQ69G5FAV", cue="c",
                    prompt="p", width=64, height=64, steps=2, guidance=5.0, seed=1, style_fingerprint="f")


def test_a_verdict_is_flagged_strictly_above_the_threshold_and_names_its_blurred_rendition():
    from gpu_runner.stages.safety import verdict_for, verdict_from_metadata, verdict_metadata

    assert not verdict_for(0.0, 0.0, "m", SPEC).flagged
    flagged = verdict_for(0.01, 0.0, "m", SPEC)
    assert flagged.flagged and flagged.blurred_object.endswith(f"{SPEC.variant_id}.blurred.png")
    assert verdict_from_metadata(verdict_metadata(flagged)) == flagged
    assert verdict_from_metadata({"soul-safety": "{not json"}) is None and verdict_from_metadata(None) is None


def test_the_tiny_checker_is_steered_by_the_threshold_not_by_code(tmp_path):
    import torch

    from gpu_runner.pipelines.safety import load_checker, score_images

    checker = load_checker(None, tmp_path, "cpu", torch.float32)
    images = [Image.new("RGB", (96, 64), (i * 60, 255 - i * 60, 30)) for i in range(3)]
    together = score_images(checker, images)
    assert [score_images(checker, [image])[0] for image in images] == pytest.approx(together, abs=1e-3)
    assert all(-2.0 <= s <= 0.0 for s in together)  # thresholds 1: never above 0, never below -2
    assert load_checker(None, tmp_path, "cpu", torch.float32).name == "tiny-safety"  # from the cache
    with pytest.raises(ValueError, match="safety checker folder"):  # a folder that is not a checker
        load_checker(str(tmp_path), tmp_path, "cpu", torch.float32)
    with pytest.raises(FileNotFoundError):
        load_checker(str(tmp_path / "absent"), tmp_path, "cpu", torch.float32)


def test_the_blurred_rendition_keeps_the_size_and_loses_the_detail():
    from gpu_runner.stages.safety import blurred

    image = Image.new("RGB", (128, 64), "white")
    for x in range(0, 128, 2):
        image.paste((0, 0, 0), (x, 0, x + 1, 64))
    soft = blurred(image, 48.0)
    assert soft.size == image.size
    row = soft.convert("L").tobytes()[32 * 128:33 * 128]  # a middle row
    assert max(abs(a - b) for a, b in zip(row, row[1:])) < 8  # stripes one pixel wide are gone (255 apart before)


def test_previews_ride_on_the_throttled_progress_write():
    from gpu_runner.stages.progress import JobSignals, ProgressReporter

    now = [0.0]
    writes = []
    reporter = ProgressReporter(lambda *a: writes.append(a), JobSignals(), 1.0, lambda: now[0])
    reporter.step(1, 10, stage="denoising")
    first = JobPreview(object="previews/j/1.webp", step=1, steps=10)
    reporter.preview(first)  # inside the interval: waits for the next write
    reporter.preview(second := JobPreview(object="previews/j/2.webp", step=2, steps=10))
    assert len(writes) == 1 and len(writes[0]) == 3
    now[0] = 1.5
    reporter.step(3, 10, stage="denoising")
    assert len(writes) == 2 and writes[1][3] == second  # the latest preview, in the same write
    now[0] = 3.0
    reporter.preview(third := JobPreview(object="previews/j/4.webp", step=4, steps=10))  # due: written at once
    assert len(writes) == 3 and writes[2][3] == third
    assert [w[0] for w in writes] == sorted(w[0] for w in writes)


def test_the_linear_preview_is_small_and_follows_the_latents():
    import torch

    from gpu_runner.pipelines.previews import Previews, linear_decoder

    latents = torch.zeros(2, 4, 128, 96)
    latents[1, 0] = 3.0  # channel 0 is mostly brightness
    dark, bright = linear_decoder(64)(latents)
    assert dark.size == (48, 64) and bright.size == (48, 64)
    assert sum(bright.convert("L").tobytes()) > sum(dark.convert("L").tobytes())
    due = Previews(every=3, decode=lambda x: [], emit=lambda *a: None)
    assert [s for s in range(1, 10) if due.due(s, 9)] == [3, 6]  # never the last step
    assert not Previews(every=0, decode=lambda x: [], emit=lambda *a: None).due(3, 9)


def test_progress_webhooks_carry_a_signed_preview_only_for_policies_that_show_previews():
    import base64

    from functions.services.webhook_delivery import outgoing
    from schemas import names

    data = {"schema_version": 1, "job_id": "img-1", "type": "image", "seq": 3, "progress": 0.5, "stage": "denoising",
            "occurred_at": "2026-12-02T10:00:00+00:00",
            "preview": {"object": "previews/img-1/4.webp", "step": 4, "steps": 8, "variant_index": 0}}
    message = {"attributes": {"ce-type": names.EVENT_JOB_PROGRESS, "ce-id": "img-1:progress:3"},
               "data": base64.b64encode(json.dumps(data).encode()).decode()}
    out = outgoing(message, lambda job_id, policy=None: None, sign=lambda name: f"https://signed/{name}")
    for policy in ("off", "flag"):
        preview = json.loads(out.body_for(policy))["data"]["preview"]
        assert preview == {"task_id": "img-1", "step": 4, "steps": 8, "url": "https://signed/previews/img-1/4.webp"}
    for policy in ("blur", "withhold"):
        body = json.loads(out.body_for(policy))["data"]
        assert "preview" not in body and body["progress"] == 0.5
    assert "previews/" not in out.body.decode()  # never the bare object name


@pytest.mark.parametrize("cue", ["penguin's", "penguins", "pénguin", "PENGUİN", "pénguin",
                                 "рenguin", "ρеnguіn"])
def test_a_blocked_word_is_found_through_inflection_accents_and_look_alike_letters(cue):
    from functions.core.normalize import normalize_cue

    assert rules.blocked_term(normalize_cue(cue), rules.normalize_terms(["penguin"])) == "penguin"
    assert rules.blocked_term(normalize_cue(cue), rules.normalize_terms(["pen"])) is None
