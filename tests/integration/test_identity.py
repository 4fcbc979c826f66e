"""Issue 20 on the emulators with the tiny models: a soul's reference images and LoRA are uploaded as bytes
(multipart or base64 JSON), validated, stored create-only and listed; they change the prompt key and the pixels
(the LoRA at scale 0 does not change pixels); two souls' LoRAs on one runner never share a pipeline call; bad
uploads are 4xx and store nothing; a pinned seed is one variant and renders the same bytes again; every result
says how it was made."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from gpu_runner.pipelines.sdxl import render_images
from gpu_runner.pipelines.tiny import tiny_sdxl_pipeline
from gpu_runner.pipelines.tiny_adapters import lora_bytes
from gpu_runner.stages.image_job import plan_image
from gpu_runner.stages.records import WorkContext
from schemas import names
from schemas.jobs import JobDoc
from tests.integration.test_runner import bucket, db, job_doc, models, run_runner, runner_settings  # noqa: F401
from tests.integration.test_runner_pipeline import Serving, status, wait_for
from tests.integration.test_runner_poison import GatedModels


@pytest.fixture(scope="module")
def tiny_unet():
    return tiny_sdxl_pipeline().unet  # the tiny SDXL's architecture and weights, apart from the runner's


def noise_png(seed: int, size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def add_reference(api, soul: str, data: bytes, *, multipart: bool = True):
    if multipart:
        return api.post(f"/style/{soul}/references", data={"image": (io.BytesIO(data), "ref.png")},
                        content_type="multipart/form-data")
    return api.post(f"/style/{soul}/references", json={"image": base64.b64encode(data).decode()})


def put_lora(api, soul: str, data: bytes, name: str, scale: float, *, multipart: bool = True):
    if multipart:
        return api.post(f"/style/{soul}/lora", data={"lora": (io.BytesIO(data), "a.safetensors"), "name": name,
                                                    "scale": str(scale)}, content_type="multipart/form-data")
    return api.post(f"/style/{soul}/lora", json={"name": name, "scale": scale,
                                                 "lora": base64.b64encode(data).decode()})


def pinned(api, soul: str = "nova", cue: str = "penguin", seed: int = 5, user: str = "u1", **extra):
    return api.get("/image", query_string={"soul_id": soul, "cue": cue, "user_id": user, "seed": seed, **extra})


def pixels(bucket, job: dict) -> np.ndarray:
    data = bucket.blob(job["result"]["object"]).download_as_bytes()
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


def rendered(api, run_runner, db, **ask) -> dict:
    queued = pinned(api, **ask)
    assert queued.status_code == 202, queued.json
    run_runner()
    job = job_doc(db, queued.json["task_id"])
    assert job["status"] == "succeeded", job.get("error")
    return job


def stored_assets(bucket) -> list[str]:
    return [b.name for b in bucket.list_blobs() if b.name.startswith(("references/", "loras/"))]


def test_references_are_stored_listed_keyed_and_condition_the_render(api, run_runner, db, bucket):
    base = rendered(api, run_runner, db)
    made = base["result"]["reproducibility"]
    assert made["seed"] == 5 and made["seed_pinned"] and made["reference_set_version"] is None
    assert made["adapters"] == [] and made["scheduler"] and len(made["weights_fingerprint"]) == 16
    assert (made["width"], made["height"]) == (base["result"]["width"], base["result"]["height"])
    assert made["steps"] >= 1 and made["guidance"] == base["request"]["guidance"] and made["model"] == "tiny-sdxl"

    first = add_reference(api, "nova", noise_png(1))
    assert first.status_code == 201, first.json
    second = add_reference(api, "nova", noise_png(2), multipart=False)
    assert second.status_code == 201
    refs = second.json["references"]
    assert len(refs) == 2 and second.json["reference_set_version"]
    assert sorted(stored_assets(bucket)) == sorted(r["object"] for r in refs)
    stored = Image.open(io.BytesIO(bucket.blob(refs[0]["object"]).download_as_bytes()))
    assert stored.format == "PNG" and stored.size == (64, 64)
    assert add_reference(api, "nova", noise_png(1)).json["references"] == refs  # the same bytes again: no change
    assert api.get("/style/nova/identity").json["references"] == refs

    conditioned = rendered(api, run_runner, db)
    assert conditioned["request"]["pk"] != base["request"]["pk"]  # the key carries the reference set
    assert [r["object"] for r in conditioned["request"]["references"]] == [r["object"] for r in refs]
    assert conditioned["result"]["reproducibility"]["reference_set_version"] == second.json["reference_set_version"]
    assert np.abs(pixels(bucket, conditioned) - pixels(bucket, base)).max() > 0

    # Removing one reference is another look again; removing both is the base look: the first variant (dedup).
    left = api.delete(f"/style/nova/references/{refs[1]['ref_id']}")
    assert left.status_code == 200 and len(left.json["references"]) == 1
    one_ref = rendered(api, run_runner, db)
    assert one_ref["request"]["pk"] not in (base["request"]["pk"], conditioned["request"]["pk"])
    assert api.delete(f"/style/nova/references/{refs[0]['ref_id']}").status_code == 200
    again = pinned(api)
    assert again.status_code == 200 and again.json["variant"]["variant_id"] == base["result"]["variant_id"]
    assert api.delete(f"/style/nova/references/{refs[0]['ref_id']}").status_code == 404


def test_a_selfie_uses_the_references_too(api, run_runner, db):
    body = {"soul_id": "mira", "city_key": "paris", "mood": "happy", "user_id": "u1"}
    plain = api.post("/image/selfie", json=body).json
    assert add_reference(api, "mira", noise_png(3)).status_code == 201
    with_refs = api.post("/image/selfie", json={**body, "user_id": "u2"}).json
    assert with_refs["pk_id"] != plain["pk_id"]
    assert job_doc(db, with_refs["task_id"])["request"]["references"]


def test_a_lora_is_applied_and_at_scale_zero_changes_nothing(api, run_runner, db, bucket, tiny_unet):
    base = rendered(api, run_runner, db, cue="owl")
    data = lora_bytes(tiny_unet, rank=4, seed=1)
    attached = put_lora(api, "nova", data, "nova-look", 1.0)
    assert attached.status_code == 200, attached.json
    lora = attached.json["lora"]
    assert (lora["name"], lora["rank"], lora["scale"]) == ("nova-look", 4, 1.0)
    assert stored_assets(bucket) == [lora["object"]]

    applied = rendered(api, run_runner, db, cue="owl")
    assert applied["request"]["pk"] != base["request"]["pk"]
    assert applied["metrics"]["adapters"] == [{"name": "nova-look", "version": lora["version"], "scale": 1.0}]
    assert applied["result"]["reproducibility"]["adapters"] == applied["metrics"]["adapters"]
    assert np.abs(pixels(bucket, applied) - pixels(bucket, base)).max() > 0

    assert put_lora(api, "nova", data, "nova-look", 0.0, multipart=False).status_code == 200
    off = rendered(api, run_runner, db, cue="owl")
    assert off["request"]["pk"] not in (base["request"]["pk"], applied["request"]["pk"])  # the scale is keyed
    assert np.array_equal(pixels(bucket, off), pixels(bucket, base))

    assert api.delete("/style/nova/lora").json["lora"] is None
    assert pinned(api, cue="owl").json["variant"]["variant_id"] == base["result"]["variant_id"]


def test_two_souls_loras_on_one_runner_never_share_a_pipeline_call(api, runner_settings, db, tiny_unet):
    atlas = api.get("/style/atlas").json["style"]  # the same size, steps and guidance as nova: only adapters differ
    assert api.post("/style", json={"soul_id": "atlas", "style": {**atlas, "guidance": 7.0, "steps": 30}}
                    ).status_code == 200
    for soul, seed in (("nova", 21), ("atlas", 22)):
        assert put_lora(api, soul, lora_bytes(tiny_unet, rank=4, seed=seed), f"{soul}-look", 1.0).status_code == 200
    asks = [(soul, cue) for soul in ("nova", "atlas") for cue in ("penguin", "owl")]
    tasks = {api.get("/image", query_string={"soul_id": s, "cue": c, "user_id": "u1"}).json["task_id"]: s
             for s, c in asks}
    gate = threading.Event()
    host = GatedModels(runner_settings, gate, threading.Event())
    serving = Serving(runner_settings.model_copy(update={"lookahead": 4, "max_batch": 4}), host)
    wait_for(lambda: all(status(db, t) == "running" for t in tasks), "all four claimed")
    gate.set()
    serving.join()
    docs = {task: job_doc(db, task) for task in tasks}
    assert all(d["status"] == "succeeded" for d in docs.values())
    for task, soul in tasks.items():
        assert [a["name"] for a in docs[task]["metrics"]["adapters"]] == [f"{soul}-look"]
    assert sorted(d["metrics"]["batch_size"] for d in docs.values()) == [2, 2, 2, 2]  # grouped by adapter set
    assert host.adapters.stats.loads == 2  # one load per soul's adapter, reused by its batch partner
    assert sum(d["metrics"]["adapter_load_seconds"] > 0 for d in docs.values()) == 4  # each batch loaded its own


def test_bad_uploads_are_4xx_and_store_nothing(api, db, bucket, tiny_unet):
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")
    cases = [
        (add_reference(api, "nova", b"this is not an image"), 400, "image"),
        (add_reference(api, "nova", bomb.getvalue()), 400, "image"),
        (api.post("/style/nova/references", data=b"x" * (60 * 1024 * 1024), content_type="application/json"),
         413, None),
        (api.post("/style/nova/references", json={"image": "not base64!"}), 400, "image"),
        (api.post("/style/nova/references", data=b"raw", content_type="image/png"), 415, None),
        (add_reference(api, "nobody", noise_png(1)), 404, "soul_id"),
        (put_lora(api, "nova", lora_bytes(tiny_unet, rank=4, seed=1)[:-10], "bad", 1.0), 400, "lora"),
        (put_lora(api, "nova", (100 * 1024 * 1024).to_bytes(8, "little") + b"{}", "bad", 1.0), 400, "lora"),
        (put_lora(api, "nova", lora_bytes(tiny_unet, rank=4, seed=1), "Bad Name", 1.0), 400, "name"),
        (put_lora(api, "nova", lora_bytes(tiny_unet, rank=4, seed=1), "ok", 5.0), 400, "scale"),
    ]
    # A LoRA with the wrong shapes: every tensor of another UNet width.
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(block_out_channels=(32, 48), layers_per_block=1, cross_attention_dim=80,
                                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=16,
                                 attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
                                 use_linear_projection=True)
    cases.append((put_lora(api, "nova", lora_bytes(other, rank=4, seed=1), "wrong", 1.0), 400, "lora"))
    for response, code, field in cases:
        assert response.status_code == code, response.json
        assert set(response.json["error"]) == {"code", "message", "field"} and response.json["error"]["field"] == field
    assert stored_assets(bucket) == []
    assert db.collection(names.IDENTITIES).document("nova").get().exists is False
    many = [add_reference(api, "nova", noise_png(10 + i)).status_code for i in range(5)]
    assert many == [201, 201, 201, 201, 409] and len(stored_assets(bucket)) == 4  # the fifth stores nothing


def test_a_pinned_seed_is_one_variant_and_renders_the_same_bytes_again(api, run_runner, db, bucket, models,
                                                                       runner_settings):
    job = rendered(api, run_runner, db, seed=424242, cue="lynx")
    assert job["request"]["seed"] == 424242
    assert api.post("/image/mark-seen", query_string={"variant_id": job["result"]["variant_id"],
                                                      "user_id": "u1"}).status_code == 200
    for user in ("u1", "u2"):  # seen or not, the pinned request is that one image
        answer = pinned(api, seed=424242, cue="lynx", user=user)
        assert answer.status_code == 200 and answer.json["variant"]["variant_id"] == job["result"]["variant_id"]
        assert answer.json["variant"]["reproducibility"]["seed"] == 424242
    assert pinned(api, seed=424243, cue="lynx").json["pk_id"] != job["request"]["pk"]

    # The same job rendered again on this runner and weights: the same PNG bytes.
    doc = JobDoc.model_validate(job)
    plan = plan_image(doc, WorkContext(settings=runner_settings, store=None, media=_NoMedia(), models=models))
    image = render_images(models.sdxl(), [plan.render],
                          prepare=lambda pipe: models.adapters.prepare(pipe, plan.render, bucket_read(bucket)).kwargs)[0]
    out = io.BytesIO()
    image.save(out, format="PNG")
    assert out.getvalue() == bucket.blob(job["result"]["object"]).download_as_bytes()


def test_schedulers_come_from_the_styles_allow_list(api, run_runner, db):
    refused = pinned(api, scheduler="ddim")
    assert refused.status_code == 400 and refused.json["error"]["field"] == "scheduler"
    style = api.get("/style/nova").json["style"]
    assert api.post("/style", json={"soul_id": "nova", "style": {**style, "schedulers": ["ddim", "euler_a"]}}
                    ).status_code == 200
    job = rendered(api, run_runner, db, scheduler="ddim")
    assert job["request"]["scheduler"] == "ddim" and job["result"]["reproducibility"]["scheduler"] == "ddim"
    bad = api.post("/style", json={"soul_id": "nova", "style": {**style, "schedulers": ["warp"]}})
    assert bad.status_code == 400


class _NoMedia:
    def existing(self, name):
        return None


def bucket_read(bucket):
    return lambda name: bucket.blob(name).download_as_bytes()
