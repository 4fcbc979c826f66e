"""Issue 20 on the runner, with the tiny SDXL on a CPU: a soul's LoRA changes the image (and at scale 0 does not),
reference images change it through the tiny IP-Adapter, adapters stay resident (loads counted) and are evicted by
count and by bytes, a hot-swapped slot renders what a freshly loaded adapter renders, the scheduler comes from the
allow-list, and a pinned seed gives the same PNG bytes again. Also: the shipped LoRA target table is the tiny
model's own, and uploads of the tiny LoRA pass the functions' validation."""

from __future__ import annotations

import io
import os
import json
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from functions.core.errors import InvalidInput  # noqa: E402
from functions.core.uploads import UploadLimits, lora_targets, validate_lora  # noqa: E402
from gpu_runner.errors import InvalidRenderSpec  # noqa: E402
from gpu_runner.pipelines.adapters import SCHEDULER_CLASSES, AdapterHost  # noqa: E402
from gpu_runner.pipelines.device import DeviceChoice  # noqa: E402
from gpu_runner.pipelines.lora_targets import pipeline_table  # noqa: E402
from gpu_runner.pipelines.sdxl import load_sdxl, render_images  # noqa: E402
from gpu_runner.pipelines.specs import LoraChoice, RenderSpec, batch_key  # noqa: E402
from gpu_runner.pipelines.tiny import ensure_tiny_sdxl  # noqa: E402
from gpu_runner.pipelines.tiny_adapters import IP_ADAPTER_WEIGHTS, ensure_tiny_ip_adapter, lora_bytes  # noqa: E402
from schemas.identity import SCHEDULERS  # noqa: E402

CPU = DeviceChoice(device="cpu", dtype=torch.float32, name="cpu")
SPEC = RenderSpec(prompt="nova, a penguin", negative_prompt="", width=64, height=64, steps=2, guidance=5.0, seed=7)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("identity-models")
    ensure_tiny_sdxl(folder)
    return folder


@pytest.fixture
def pipe(cache):
    return load_sdxl(None, cache, CPU)  # a fresh pipeline per test: adapters are state on it


class Objects(dict):
    """The media store's `read` for tests: object name -> bytes, counting reads."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def read(self, name: str) -> bytes:
        self.reads += 1
        return self[name]


def host(cache, **kwargs) -> AdapterHost:
    options = dict(cache_dir=cache, ip_adapter_model=None, ip_adapter_weight_name="ip-adapter.safetensors",
                   tiny_ip_adapter=True, resident=4, budget_bytes=1 << 30)
    return AdapterHost(**{**options, **kwargs})


def render(pipe, adapters: AdapterHost, objects: Objects, spec: RenderSpec = SPEC) -> np.ndarray:
    image = render_images(pipe, [spec], prepare=lambda p: adapters.prepare(p, spec, objects.read).kwargs)[0]
    return np.asarray(image, dtype=np.int16)


def png(image_array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image_array.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def with_lora(objects: Objects, pipe, name: str, seed: int, scale: float = 1.0, rank: int = 4) -> RenderSpec:
    data = lora_bytes(pipe.unet, rank=rank, seed=seed)
    objects[f"loras/{name}.safetensors"] = data
    return replace(SPEC, lora=LoraChoice(name=name, version=f"{seed:016x}", scale=scale,
                                         object=f"loras/{name}.safetensors"))


def test_a_lora_changes_the_image_and_at_scale_zero_does_not(pipe, cache):
    objects, adapters = Objects(), host(cache)
    base = render(pipe, adapters, objects)
    spec = with_lora(objects, pipe, "nova", seed=1)
    applied = render(pipe, adapters, objects, spec)
    assert np.abs(applied - base).max() > 0
    assert np.array_equal(render(pipe, adapters, objects, replace(spec, lora=replace(spec.lora, scale=0.0))), base)
    assert np.array_equal(render(pipe, adapters, objects), base)  # no LoRA: adapters disabled, the base model
    assert adapters.stats.loads == 1 and adapters.stats.hits == 1  # loaded once, reused at the other scale


def test_resident_adapters_are_reused_and_evicted_by_count_and_by_bytes(pipe, cache):
    objects = Objects()
    specs = [with_lora(objects, pipe, f"soul{i}", seed=i) for i in range(3)]
    adapters = host(cache, resident=2)
    first = render(pipe, adapters, objects, specs[0])
    render(pipe, adapters, objects, specs[1])
    again = render(pipe, adapters, objects, specs[0])  # resident: no load, same pixels
    assert adapters.stats.loads == 2 and adapters.stats.hits == 1 and np.array_equal(first, again)
    render(pipe, adapters, objects, specs[2])  # a third: the least recently used (soul1) goes
    assert adapters.stats.evictions == 1
    assert sorted(adapters.resident) == sorted([f"soul0-{0:016x}", f"soul2-{2:016x}"])
    assert np.array_equal(render(pipe, adapters, objects, specs[0]), first)

    budget = host(cache, resident=8, budget_bytes=len(objects["loras/soul0.safetensors"]) + 10)
    fresh = load_sdxl(None, cache, CPU)
    for spec in specs:
        render(fresh, budget, objects, spec)
    assert budget.stats.evictions == 2 and len(budget.resident) == 1  # only one fits in the byte budget


def test_a_hot_swapped_slot_renders_what_a_fresh_load_renders(pipe, cache):
    objects = Objects()
    one, two = with_lora(objects, pipe, "one", seed=11), with_lora(objects, pipe, "two", seed=12)
    plain = host(cache)
    expected = [render(pipe, plain, objects, spec) for spec in (one, two)]
    swapping = host(cache, hotswap=True, hotswap_rank=8)
    fresh = load_sdxl(None, cache, CPU)
    got = [render(fresh, swapping, objects, spec) for spec in (one, two, one)]
    assert swapping.resident == [f"one-{11:016x}"] and swapping.stats.loads == 3
    assert np.abs(got[0] - expected[0]).max() <= 1 and np.abs(got[1] - expected[1]).max() <= 1
    assert np.array_equal(got[0], got[2])


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_a_compiled_unet_with_its_lora_slot_never_recompiles_for_loras_scales_or_none(pipe, cache):
    """The slot is made before compiling (adapters.py `prepare_slot`): a first LoRA, another one, another scale and
    a render without one reuse the graphs traced at the warm-up, and each renders what an eager pipeline renders.
    Traced with dynamo's eager backend: recompiles are dynamo's guards, whatever backend then compiles."""
    from gpu_runner.pipelines import acceleration

    torch._dynamo.reset()
    objects, table = Objects(), pipeline_table(pipe)  # (before anything wraps its layers)
    plain, eager = host(cache, hotswap=False), load_sdxl(None, cache, CPU)
    one = with_lora(objects, eager, "one", seed=21)
    two = with_lora(objects, eager, "two", seed=22, rank=8)
    wide = with_lora(objects, eager, "wide", seed=23, rank=16)  # above the slot's rank
    objects["loras/ff.safetensors"] = lora_bytes(eager.unet, rank=4, seed=24, targets=("ff.net.2",))
    elsewhere = replace(SPEC, lora=LoraChoice(name="ff", version="1" * 16, scale=1.0, object="loras/ff.safetensors"))
    base = render(load_sdxl(None, cache, CPU), host(cache), objects)
    expected = {name: render(eager, plain, objects, spec) for name, spec in (
        ("one", one), ("two", two), ("one at 0.4", replace(one, lora=replace(one.lora, scale=0.4))))}

    slotted = host(cache, hotswap_rank=8)
    attention = [name for part in table.values() for name in part
                 if name.rsplit(".", 1)[-1] in {"to_q", "to_k", "to_v", "q_proj", "k_proj", "v_proj", "out_proj"}
                 or name.endswith("to_out.0")]
    assert slotted.prepare_slot(pipe) == len(attention) > 0  # every attention projection, UNet and text encoders
    acceleration.compile_module(pipe.unet, "regional", backend="eager")
    pipe._soul_compiled = "regional"
    assert np.array_equal(render(pipe, slotted, objects), base)  # the warm-up: the slot at scale 0 adds nothing
    traced = compiled_graphs()
    assert traced >= 1
    got = {"one": render(pipe, slotted, objects, one), "two": render(pipe, slotted, objects, two),
           "one at 0.4": render(pipe, slotted, objects, replace(one, lora=replace(one.lora, scale=0.4)))}
    none_again = render(pipe, slotted, objects)
    assert compiled_graphs() == traced  # not one recompile
    for name, image in got.items():
        assert np.abs(image - expected[name]).max() <= 1, name
    assert np.array_equal(none_again, base) and np.abs(got["one"] - base).max() > 0
    assert slotted.stats.loads == 3 and slotted.resident == [f"one-{21:016x}"]

    with pytest.raises(InvalidRenderSpec, match="compiled LoRA slot.*rank is 16"):
        render(pipe, slotted, objects, wide)
    assert compiled_graphs() == traced
    with pytest.raises(InvalidRenderSpec, match="compiled LoRA slot"):  # a layer the slot does not cover
        render(pipe, slotted, objects, elsewhere)
    assert np.array_equal(render(pipe, slotted, objects), base) and compiled_graphs() == traced
    assert np.abs(render(pipe, slotted, objects, one) - expected["one"]).max() <= 1  # loaded again after the refusal
    assert compiled_graphs() == traced


def reference_specs(objects: Objects, count: int = 4) -> list[RenderSpec]:
    """Specs with 1..count noise references (each set its own version), at identity scale 0.8."""
    names = []
    for index in range(count):
        names.append(f"references/nova/{index}.png")
        objects[names[-1]] = png(np.random.default_rng(100 + index).integers(0, 255, (48, 48, 3)))
    return [replace(SPEC, references=tuple(names[:n]), reference_set_version=f"{n:016x}", identity_scale=0.8)
            for n in range(1, count + 1)]


def test_a_compiled_unet_with_its_ip_adapter_slot_never_recompiles_for_references_their_count_scale_or_none(
        pipe, cache):
    """The IP-Adapter is loaded before compiling (adapters.py `prepare_ip_slot`): renders with one to four
    references, another scale and none reuse the graphs traced at the warm-up, and each renders what an eager
    pipeline renders. A render without references is the base model's, to the pixel."""
    from gpu_runner.pipelines import acceleration

    torch._dynamo.reset()
    objects, eager = Objects(), load_sdxl(None, cache, CPU)
    specs = reference_specs(objects)
    base = render(load_sdxl(None, cache, CPU), host(cache), objects)
    plain = host(cache)
    cases = {f"{len(spec.references)} references": spec for spec in specs}
    cases["2 references at 0.3"] = replace(specs[1], identity_scale=0.3)
    expected = {name: render(eager, plain, objects, spec) for name, spec in cases.items()}

    slotted = host(cache)
    facts = slotted.before_compile(pipe)
    assert facts["ip_adapter_slot"] is True and slotted.stats.ip_adapter_loads == 1
    acceleration.compile_module(pipe.unet, "regional", backend="eager")
    pipe._soul_compiled = "regional"
    assert np.array_equal(render(pipe, slotted, objects), base)  # the warm-up: no references adds nothing
    traced = compiled_graphs()
    assert traced >= 1
    got = {name: render(pipe, slotted, objects, spec) for name, spec in cases.items()}
    none_again = render(pipe, slotted, objects)
    assert compiled_graphs() == traced  # not one recompile
    for name, image in got.items():
        assert np.abs(image - expected[name]).max() <= 1, name
        assert np.abs(image - base).max() > 0, name
    assert len({png(image) for image in got.values()}) == len(got)  # each set and scale is its own image
    assert np.array_equal(none_again, base) and slotted.stats.ip_adapter_loads == 1


def test_references_are_attended_to_together_not_averaged(pipe, cache):
    """The runner repeats a set's image embeddings up to a fixed count (a compiled UNet sees one shape): every
    reference the same number of times, so attention over them is what diffusers' own concatenation of the set
    gives, and the same set in another order is the same image."""
    objects, adapters = Objects(), host(cache)
    spec = reference_specs(objects, 3)[2]
    ours = render(pipe, adapters, objects, spec)
    reordered = render(pipe, adapters, objects, replace(spec, references=tuple(reversed(spec.references))))
    theirs = load_sdxl(None, cache, CPU)  # diffusers alone: its loader, its scale, its concatenation of the set
    theirs.load_ip_adapter(str(ensure_tiny_ip_adapter(cache, theirs.unet)), subfolder="",
                           weight_name=IP_ADAPTER_WEIGHTS, image_encoder_folder="image_encoder", local_files_only=True)
    theirs.set_ip_adapter_scale(spec.identity_scale)
    images = [Image.open(io.BytesIO(objects[name])).convert("RGB") for name in spec.references]
    direct = render_images(theirs, [spec], prepare=lambda p: {"ip_adapter_image": [images]})[0]
    assert np.abs(ours - np.asarray(direct, dtype=np.int16)).max() <= 1
    assert np.abs(ours - reordered).max() <= 1


def test_a_runner_with_real_weights_and_no_ip_adapter_refuses_references_clearly(pipe, cache):
    objects = Objects()
    spec = reference_specs(objects, 1)[0]
    adapters = host(cache, tiny_ip_adapter=False)
    with pytest.raises(InvalidRenderSpec, match="SOUL_IP_ADAPTER_MODEL"):
        render(pipe, adapters, objects, spec)
    assert adapters.before_compile(pipe)["ip_adapter_slot"] is False
    assert render(pipe, adapters, objects).shape == (64, 64, 3)  # without references it serves


def test_references_condition_the_image_through_the_ip_adapter(pipe, cache):
    objects, adapters = Objects(), host(cache)
    base = render(pipe, adapters, objects)
    for name, seed in (("references/nova/a.png", 1), ("references/nova/b.png", 2)):
        noise = np.random.default_rng(seed).integers(0, 255, (48, 48, 3))
        objects[name] = png(noise)
    spec_a = replace(SPEC, references=("references/nova/a.png",), reference_set_version="a" * 16, identity_scale=0.8)
    spec_b = replace(spec_a, references=("references/nova/b.png",), reference_set_version="b" * 16)
    with_a, with_b = render(pipe, adapters, objects, spec_a), render(pipe, adapters, objects, spec_b)
    assert np.abs(with_a - base).max() > 0 and np.abs(with_a - with_b).max() > 0
    assert np.array_equal(render(pipe, adapters, objects), base)  # IP-Adapter loaded, no references: unchanged
    assert np.array_equal(render(pipe, adapters, objects, replace(spec_a, identity_scale=0.0)), base)
    both = replace(spec_a, references=("references/nova/a.png", "references/nova/b.png"))
    assert np.abs(render(pipe, adapters, objects, both) - with_a).max() > 0
    assert adapters.stats.ip_adapter_loads == 1 and objects.reads == 2  # decoded references are kept


def test_a_pinned_seed_gives_the_same_bytes_and_the_scheduler_comes_from_the_allow_list(pipe, cache):
    objects, adapters = Objects(), host(cache)
    spec = replace(SPEC, seed=123456, scheduler="dpmpp_2m")
    first = png(render(pipe, adapters, objects, spec))
    render(pipe, adapters, objects, replace(spec, seed=99))
    assert png(render(pipe, adapters, objects, spec)) == first
    assert png(render(pipe, adapters, objects, replace(spec, scheduler=None))) != first
    assert set(SCHEDULER_CLASSES) == set(SCHEDULERS)
    with pytest.raises(InvalidRenderSpec, match="scheduler"):
        replace(SPEC, scheduler="made_up")


def test_a_batch_never_mixes_adapter_sets():
    lora = LoraChoice(name="nova", version="0" * 16, scale=1.0, object="x")
    variants = [SPEC, replace(SPEC, lora=lora), replace(SPEC, lora=replace(lora, scale=0.5)),
                replace(SPEC, lora=replace(lora, version="1" * 16)), replace(SPEC, scheduler="ddim"),
                replace(SPEC, references=("r",), reference_set_version="a" * 16, identity_scale=0.6),
                replace(SPEC, references=("r",), reference_set_version="a" * 16, identity_scale=0.7)]
    assert len({batch_key(spec) for spec in variants}) == len(variants)
    assert batch_key(replace(SPEC, seed=1, prompt="other")) == batch_key(SPEC)


def test_the_shipped_lora_table_is_the_tiny_models_own_and_accepts_its_lora(pipe):
    shipped = json.loads(Path("functions/data/lora_targets/tiny-sdxl-v1.json").read_text())
    assert shipped == json.loads(json.dumps(pipeline_table(pipe)))
    limits = UploadLimits()
    facts = validate_lora(lora_bytes(pipe.unet, rank=4, seed=3), lora_targets("tiny-sdxl-v1"), limits)
    assert facts.rank == 4 and facts.components == ("unet",)
    with pytest.raises(InvalidInput, match="rank 8; at most 4"):
        validate_lora(lora_bytes(pipe.unet, rank=8, seed=3), lora_targets("tiny-sdxl-v1"),
                      UploadLimits(lora_max_rank=4))
    # A LoRA made for another architecture (SDXL base's layer names) does not fit the tiny model.
    with pytest.raises(InvalidInput):
        validate_lora(lora_bytes(pipe.unet, rank=4, seed=3), lora_targets("sdxl-base-1.0"), limits)
