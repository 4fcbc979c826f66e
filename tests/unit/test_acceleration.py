"""Speed settings and compile artifacts (gpu_runner/pipelines/acceleration.py, compile_cache.py, startup.py): the
decision table, the artifact key and its checks, the stores, and, on the tiny SDXL with a real `torch.compile` on
the CPU, a start that compiles and saves, a start that loads what was saved, and every fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from gpu_runner.pipelines import acceleration, compile_cache
from gpu_runner.pipelines.acceleration import Capabilities, Measured, choose
from gpu_runner.pipelines.compile_cache import ArtifactKey, LocalArtifactStore
from gpu_runner.pipelines.specs import parse_compile_shapes
from gpu_runner.settings import RunnerSettings

REPO = Path(__file__).resolve().parents[2]
CPU = Capabilities(is_cuda=False, gpu_name="cpu", compute_capability=None, has_torchao=True, has_compiler=True)
H100 = Capabilities(is_cuda=True, gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), has_torchao=True,
                    has_compiler=True)
A100 = Capabilities(is_cuda=True, gpu_name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0), has_torchao=True,
                    has_compiler=True)
TABLE = {"NVIDIA H100": Measured("regional", "fp8", "BENCHMARKS.md test"),
         "NVIDIA H100 80GB": Measured("full", "none", "a longer prefix wins")}


# --- the decision --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "caps", "table", "expected"),
    [
        (("auto", "auto"), CPU, TABLE, ("off", "none")),  # the CPU is never in the table
        (("auto", "auto"), A100, TABLE, ("off", "none")),  # a card nobody measured: the safe setting
        (("auto", "auto"), H100, TABLE, ("full", "none")),  # the longest matching prefix
        (("auto", "auto"), H100, {}, ("off", "none")),  # the shipped table is empty until a CUDA run fills it
        (("regional", "none"), CPU, TABLE, ("regional", "none")),  # an explicit choice is honoured
        (("full", "fp8"), H100, {}, ("full", "fp8")),
        (("regional", "fp8"), A100, {}, ("regional", "none")),  # fp8 needs compute capability >= 8.9
        (("off", "fp8"), CPU, {}, ("off", "none")),
    ],
)
def test_choose(setting, caps, table, expected):
    chosen = choose(*setting, caps, table)
    assert (chosen.compile, chosen.quantize) == expected
    assert chosen.compile_reason and chosen.quantize_reason


def test_every_fallback_says_why():
    assert "8.9" in choose("off", "fp8", A100, {}).quantize_reason
    assert "8.0" in choose("off", "fp8", A100, {}).quantize_reason
    no_torchao = Capabilities(**{**H100.__dict__, "has_torchao": False})
    assert choose("off", "fp8", no_torchao, {}).quantize == "none"
    assert "torchao" in choose("off", "fp8", no_torchao, {}).quantize_reason
    no_compiler = Capabilities(**{**H100.__dict__, "has_compiler": False})
    chosen = choose("regional", "none", no_compiler, {})
    assert chosen.compile == "off" and "backend" in chosen.compile_reason
    with pytest.raises(ValueError, match="compile must be one of"):
        choose("fast", "none", CPU, {})
    with pytest.raises(ValueError, match="quantize must be one of"):
        choose("off", "int4", CPU, {})


def test_settings_refuse_unknown_modes_and_bad_shapes():
    for field, value in [("compile", "fast"), ("quantize", "int4"), ("compile_fallback", "crash"),
                         ("compile_shapes", "1024x1001:1"), ("compile_shapes", "1024:1"),
                         ("compile_shapes", "1024x1024:99"), ("compile_cache_prefix", "../etc/")]:
        with pytest.raises(ValidationError):
            RunnerSettings(**{field: value})
    assert RunnerSettings(compile_shapes=" 1024x1024:1, 768x1344:2 ").compile == "auto"


def test_shapes_parse():
    assert parse_compile_shapes("1024x1024:1,768X1344:4, 512x512") == [(1024, 1024, 1), (768, 1344, 4), (512, 512, 1)]
    assert parse_compile_shapes("") == []
    with pytest.raises(ValueError, match="'big'"):
        parse_compile_shapes("big")


def test_capabilities_on_this_machine_see_the_cpu_and_its_compiler():
    from gpu_runner.pipelines.device import DeviceChoice

    caps = acceleration.capabilities(DeviceChoice("cpu", torch.float32, "cpu"))
    assert (caps.is_cuda, caps.gpu_name, caps.compute_capability) == (False, "cpu", None)
    assert caps.has_compiler  # g++ is on the image; inductor needs it for CPU kernels


# --- the artifact key and stores -------------------------------------------------------------------------------------

KEY = ArtifactKey(torch="2.13.0", triton="3.5.0", device="NVIDIA H200", model="abc", compile="regional",
                  quantize="none", dtype="float16", shapes=("1024x1024:1",))


@pytest.mark.parametrize("field", ["torch", "triton", "device", "model", "compile", "quantize", "dtype", "shapes"])
def test_every_key_field_names_a_different_artifact(field):
    changed = ArtifactKey(**{**KEY.__dict__, field: ("x",) if field == "shapes" else "x"})
    assert changed.object_name != KEY.object_name
    assert KEY.differences(json.loads(json.dumps(changed.__dict__))) == [field]


def test_model_fingerprint_follows_structure_not_weights():
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    assert compile_cache.model_fingerprint(a) == compile_cache.model_fingerprint(b)  # other random weights
    assert compile_cache.model_fingerprint(a) != compile_cache.model_fingerprint(torch.nn.Linear(4, 8))
    assert compile_cache.model_fingerprint(a) != compile_cache.model_fingerprint(a.half())


class DictStore:
    def __init__(self, name: str, fail: bool = False):
        self.name, self.data, self.fail = name, {}, fail

    def get(self, key):
        if self.fail:
            raise ConnectionError("bucket unreachable")
        return self.data.get(key)

    def put(self, key, data):
        if self.fail:
            raise ConnectionError("bucket unreachable")
        self.data.setdefault(key, data)


def test_a_miss_a_foreign_artifact_and_garbage_are_misses_with_reasons(tmp_path):
    disk = LocalArtifactStore(tmp_path)
    assert compile_cache.load(KEY, [disk]).outcome == "missing"

    other = ArtifactKey(**{**KEY.__dict__, "torch": "2.12.0"})
    (tmp_path / KEY.object_name).write_bytes(compile_cache.pack(other, b"blob"))  # e.g. copied by hand
    result = compile_cache.load(KEY, [disk])
    assert (result.outcome, result.detail) == ("mismatch", "differs in torch")

    (tmp_path / KEY.object_name).write_bytes(b"not an artifact")
    assert compile_cache.load(KEY, [disk]).outcome == "corrupt"

    packed = compile_cache.pack(KEY, b"\x00garbage torch cannot read")
    (tmp_path / KEY.object_name).write_bytes(packed[:-1] + b"!")  # one byte flipped in transit
    result = compile_cache.load(KEY, [disk])
    assert (result.outcome, result.detail) == ("corrupt", "checksum does not match")

    (tmp_path / KEY.object_name).write_bytes(packed)  # intact, but not something torch can load
    result = compile_cache.load(KEY, [disk])
    assert result.outcome == "corrupt" and "torch refused" in result.detail

    assert compile_cache.load(KEY, [DictStore("bucket", fail=True)]).outcome == "missing"


def test_local_store_is_create_only_and_atomic(tmp_path):
    disk = LocalArtifactStore(tmp_path / "compile")
    disk.put("a.bin", b"first")
    disk.put("a.bin", b"second")
    assert disk.get("a.bin") == b"first"
    assert disk.get("b.bin") is None
    assert sorted(p.name for p in (tmp_path / "compile").iterdir()) == ["a.bin"]  # no partial files left


# --- real compiles on the tiny SDXL ----------------------------------------------------------------------------------

# Each start is its own process with its own Inductor cache folder: what the second start finds can only come
# from the saved artifact, exactly as on a new VM.
START = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import torch
    from gpu_runner.pipelines.host import ModelHost
    from gpu_runner.pipelines.specs import RenderSpec
    from gpu_runner.settings import RunnerSettings

    settings = RunnerSettings(force_cpu=True, model_cache_dir=Path(sys.argv[1]), compile=sys.argv[2],
                              compile_fallback=sys.argv[3], compile_cache_dir=Path(sys.argv[4]),
                              compile_shapes="64x64:1")
    host = ModelHost(settings)
    host.warm_sdxl()
    image = host.render_plain(host.sdxl(), [RenderSpec("a penguin", "", 64, 64, 2, 5.0, 7)])[0]
    Path(sys.argv[5]).write_bytes(image.tobytes())
    compiled = sum(1 for m in host.sdxl().unet.modules() if getattr(m, "_compiled_call_impl", None) is not None)
    from torch._dynamo.utils import counters
    print(json.dumps({"report": host.startup.snapshot(), "compiled": compiled,
                      "acceleration": host.acceleration.as_dict(),
                      "cache": {**counters["inductor"], **counters["aot_autograd"]}}))
""")


def start(tmp_path: Path, name: str, compile_mode: str, fallback: str = "compile") -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", START, str(tmp_path / "models"), compile_mode, fallback, str(tmp_path / "artifacts"),
         str(tmp_path / f"{name}.raw")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def phases(result: dict) -> dict[str, dict]:
    return {p["phase"]: p for p in result["report"]["phases"]}


@pytest.fixture(scope="module")
def eager_host(tmp_path_factory):
    from gpu_runner.pipelines.host import ModelHost

    folder = tmp_path_factory.mktemp("eager")
    return ModelHost(RunnerSettings(force_cpu=True, model_cache_dir=folder / "models", compile="off",
                                    compile_cache_dir=folder / "artifacts"))


def penguin(pipe):
    from gpu_runner.pipelines.sdxl import render_images
    from gpu_runner.pipelines.specs import RenderSpec

    return render_images(pipe, [RenderSpec("a penguin", "", 64, 64, 2, 5.0, 7)])[0]


def test_a_second_start_loads_what_the_first_compiled_and_renders_the_same_image(tmp_path, eager_host):
    eager_host.warm_sdxl()
    eager = eager_host.startup.snapshot()
    assert eager["artifacts"] == "not compiling" and [p["phase"] for p in eager["phases"]] == [
        "device", "load", "warmup"]

    first = start(tmp_path, "first", "regional")
    assert first["report"]["artifacts"] == "compiled and saved" and first["report"]["artifact_bytes"] > 0
    assert first["compiled"] > 0 and set(phases(first)) >= {"device", "load", "load_artifacts", "compile",
                                                            "save_artifacts"}
    assert phases(first)["compile"]["from_artifacts"] is False
    # traced with the LoRA slot and the IP-Adapter in the UNet (adapters.py before_compile), warmed up through them
    assert first["report"]["lora_slot_layers"] > 0 and first["report"]["ip_adapter_slot"] is True
    assert "adapter_slots" in phases(first) and "adapter_slots_error" not in first["report"]
    assert first["cache"].get("fxgraph_cache_hit", 0) == 0 and first["cache"]["fxgraph_cache_miss"] >= 1
    assert len(list((tmp_path / "artifacts").iterdir())) == 1

    second = start(tmp_path, "second", "regional")
    assert second["report"]["artifacts"] == "loaded" and second["report"]["artifact_store"] == "disk"
    assert phases(second)["compile"]["from_artifacts"] is True and "save_artifacts" not in phases(second)
    # Its own Inductor cache folder was empty: every hit came from the artifact.
    assert second["cache"].get("fxgraph_cache_miss", 0) == 0 and second["cache"]["fxgraph_cache_hit"] >= 1
    assert second["cache"].get("autograd_cache_hit", 0) >= 1

    # Compiled kernels may round differently from eager ones, but never draw another image.
    reference = torch.frombuffer(bytearray(penguin(eager_host.sdxl()).tobytes()), dtype=torch.uint8).float()
    images = [torch.frombuffer(bytearray((tmp_path / f"{n}.raw").read_bytes()), dtype=torch.uint8).float()
              for n in ("first", "second")]
    assert (images[0] - reference).abs().max() <= 8
    assert torch.equal(images[0], images[1])


def test_a_missing_artifact_with_the_eager_fallback_serves_eager_without_compiling(tmp_path, eager_host):
    from gpu_runner.pipelines.sdxl import render_images
    from gpu_runner.pipelines.startup import CompilePlan, StartupReport, prepare_sdxl

    pipe = eager_host.sdxl()
    report = StartupReport()
    plan = CompilePlan("regional", "none", "eager", [(64, 64, 1)], [LocalArtifactStore(tmp_path / "art")])
    chosen = prepare_sdxl(pipe, eager_host.device, plan, report, render_images)
    assert chosen.compile == "off" and "fallback eager" in chosen.compile_reason
    assert report.snapshot()["artifacts"] == "missing"
    assert [p["phase"] for p in report.snapshot()["phases"]] == ["load_artifacts"]
    assert not any(getattr(m, "_compiled_call_impl", None) is not None for m in pipe.unet.modules())
    assert not (tmp_path / "art").exists()


def test_a_compile_that_fails_leaves_an_eager_pipeline_that_renders(tmp_path, eager_host):
    from gpu_runner.pipelines.startup import CompilePlan, StartupReport, prepare_sdxl

    pipe = eager_host.sdxl()
    eager = penguin(pipe)

    def failing_render(pipe, specs):
        raise RuntimeError("inductor: C++ compile failed")  # what a broken toolchain raises from the first call

    report = StartupReport()
    plan = CompilePlan("regional", "none", "compile", [(64, 64, 1)], [LocalArtifactStore(tmp_path / "art")])
    chosen = prepare_sdxl(pipe, eager_host.device, plan, report, failing_render)
    assert chosen.compile == "off" and "compile failed" in chosen.compile_reason
    last = report.snapshot()["phases"][-1]
    assert (last["phase"], last["outcome"]) == ("compile", "failed")
    assert report.snapshot()["artifacts"] == "compile failed"
    assert not any(getattr(m, "_compiled_call_impl", None) is not None for m in pipe.unet.modules())
    assert penguin(pipe).tobytes() == eager.tobytes()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs CUDA compute capability >= 8.9")
def test_fp8_on_a_capable_card_quantizes_the_unet_and_keeps_the_picture(tmp_path):
    from gpu_runner.pipelines.host import ModelHost

    def render(quantize: str):
        host = ModelHost(RunnerSettings(model_cache_dir=tmp_path / "models", compile="off", quantize=quantize))
        image = penguin(host.sdxl())
        return host, torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float()

    fp16_host, fp16 = render("none")
    fp8_host, fp8 = render("fp8")
    assert fp8_host.acceleration.quantize == "fp8" and fp16_host.acceleration.quantize == "none"
    assert "quantize" in {p["phase"] for p in fp8_host.startup.snapshot()["phases"]}
    assert (fp8 - fp16).abs().mean() <= 8  # the tiny model's pixels are noise; the same noise, not another


def test_a_pipeline_the_runner_compiled_gets_its_loras_hot_swapped(tmp_path):
    """Regional compilation leaves no `_orig_mod` wrapper; adding a LoRA's layers to compiled blocks would recompile
    them, so the adapter host must see the runner's own compile mark (unless hot swap is set either way)."""
    from types import SimpleNamespace

    from gpu_runner.pipelines.adapters import AdapterHost

    def adapters(hotswap):
        return AdapterHost(cache_dir=tmp_path, ip_adapter_model=None, ip_adapter_weight_name=None, resident=2,
                           budget_bytes=1 << 20, hotswap=hotswap, hotswap_rank=8)

    compiled = SimpleNamespace(unet=torch.nn.Linear(1, 1), _soul_compiled="regional")
    eager = SimpleNamespace(unet=torch.nn.Linear(1, 1), _soul_compiled=None)
    assert adapters(None)._use_hotswap(compiled) is True
    assert adapters(None)._use_hotswap(eager) is False
    assert adapters(False)._use_hotswap(compiled) is False
