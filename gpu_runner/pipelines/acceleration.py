"""How fast the runner's pipelines run on this device, decided once at start: which compilation (`SOUL_COMPILE` =
`auto | off | regional | full`) and which quantization (`SOUL_QUANTIZE` = `auto | none | fp8`), and applying them.

`choose()` is the one decision, a pure function of the settings, the device's capabilities and the measured
table below, with a reason for every choice so the start-up log says why. `auto` takes a card's entry in
`MEASURED` (figures in BENCHMARKS.md, taken with `bench/gpu.py` on that card) and otherwise the safe setting: eager
and unquantized. An explicit choice the card or the installed libraries cannot honour degrades to the safe
setting with the reason logged, never to a crash: a fleet that cannot compile still renders.

- `regional` compiles only the model's repeated blocks (diffusers' `compile_repeated_blocks`; SDXL's UNet declares
  `BasicTransformerBlock`, SVD's UNet gets its transformer blocks by class name): one compile serves every copy of
  the block, a fraction of a whole-model compile's time. `full` compiles the whole UNet (and the VAE decoder).
- `fp8` is torchao's dynamic fp8 quantization of the UNet's linear layers (activations and weights in
  `float8_e4m3fn`, per-row scales), on compute capability >= 8.9 (Ada, Hopper and later) only.

The compile artifacts that make a second start fast are `compile_cache.py`'s."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import torch

log = structlog.get_logger(__name__)

COMPILE_MODES = ("off", "regional", "full")
QUANTIZE_MODES = ("none", "fp8")
FP8_MIN_CAPABILITY = (8, 9)

# The repeated blocks to compile regionally, for models whose class does not declare `_repeated_blocks`.
REGION_CLASSES = ("BasicTransformerBlock", "TemporalBasicTransformerBlock")


@dataclass(frozen=True)
class Measured:
    """What a benchmark run on one card showed pays: the settings `auto` takes there."""

    compile: str
    quantize: str
    source: str  # the BENCHMARKS.md section the figures come from


# Keyed by the card's name as torch reports it (a prefix match: "NVIDIA H100" covers its variants). Empty until a
# CUDA run measures regional compilation and fp8 against the fp16 eager reference (bench/gpu.py): until then `auto`
# is eager fp16 everywhere, the setting every figure in BENCHMARKS.md was taken with.
MEASURED: dict[str, Measured] = {}


@dataclass(frozen=True)
class Capabilities:
    """What the device and the installed libraries can do, read once (`capabilities()`), passed to `choose()`."""

    is_cuda: bool
    gpu_name: str  # "cpu" on the CPU
    compute_capability: tuple[int, int] | None
    has_torchao: bool
    has_compiler: bool  # torch.compile's backend can build kernels here (Triton on CUDA, a C++ compiler on CPU)


@dataclass(frozen=True)
class Acceleration:
    """The settings in force, each with why."""

    compile: str
    quantize: str
    compile_reason: str
    quantize_reason: str

    def as_dict(self) -> dict:
        return {"compile": self.compile, "quantize": self.quantize,
                "compile_reason": self.compile_reason, "quantize_reason": self.quantize_reason}


def measured_for(gpu_name: str, table: dict[str, Measured] | None = None) -> Measured | None:
    table = MEASURED if table is None else table
    matches = [prefix for prefix in table if gpu_name.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None


def choose(compile_setting: str, quantize_setting: str, caps: Capabilities,
           table: dict[str, Measured] | None = None) -> Acceleration:
    """THE decision. `auto` = the card's measured entry, else off/none; an explicit setting the card or the libraries
    cannot honour falls back to off/none, with the reason."""
    if compile_setting not in ("auto", *COMPILE_MODES):
        raise ValueError(f"compile must be one of auto, {', '.join(COMPILE_MODES)}; got {compile_setting!r}")
    if quantize_setting not in ("auto", *QUANTIZE_MODES):
        raise ValueError(f"quantize must be one of auto, {', '.join(QUANTIZE_MODES)}; got {quantize_setting!r}")
    measured = measured_for(caps.gpu_name, table) if caps.is_cuda else None

    if compile_setting == "auto":
        compile_mode = measured.compile if measured else "off"
        compile_reason = (f"auto: measured on {caps.gpu_name} ({measured.source})" if measured
                          else f"auto: nothing measured pays on {caps.gpu_name}")
    else:
        compile_mode, compile_reason = compile_setting, "set"
    if compile_mode != "off" and not caps.has_compiler:
        compile_mode, compile_reason = "off", f"{compile_setting}: torch.compile has no working backend here"

    if quantize_setting == "auto":
        quantize_mode = measured.quantize if measured else "none"
        quantize_reason = (f"auto: measured on {caps.gpu_name} ({measured.source})" if measured
                           else f"auto: nothing measured on {caps.gpu_name}")
    else:
        quantize_mode, quantize_reason = quantize_setting, "set"
    if quantize_mode == "fp8":
        if not caps.is_cuda or caps.compute_capability is None or caps.compute_capability < FP8_MIN_CAPABILITY:
            quantize_mode = "none"
            quantize_reason = (f"{quantize_setting}: fp8 needs CUDA compute capability >= 8.9, "
                               f"{caps.gpu_name} has {_capability_text(caps.compute_capability)}")
        elif not caps.has_torchao:
            quantize_mode, quantize_reason = "none", f"{quantize_setting}: torchao is not installed"
    return Acceleration(compile_mode, quantize_mode, compile_reason, quantize_reason)


def _capability_text(capability: tuple[int, int] | None) -> str:
    return "none" if capability is None else f"{capability[0]}.{capability[1]}"


def capabilities(device) -> Capabilities:
    """Read what `device` (a `DeviceChoice`) and the installed libraries offer. Probing the compiler is cheap: it
    checks that the backend's toolchain exists, not that a compile succeeds (`apply` handles a failing one)."""
    if device.is_cuda:
        index = torch.device(device.device).index or 0
        capability = torch.cuda.get_device_capability(index)
        has_compiler = importlib.util.find_spec("triton") is not None
        name = torch.cuda.get_device_name(index)
    else:
        capability, name = None, "cpu"
        from torch._inductor import cpp_builder  # noqa: PLC0415 - inductor is heavy; only at start-up

        try:
            has_compiler = bool(cpp_builder.get_cpp_compiler())
        except Exception:  # noqa: BLE001 - no C++ compiler: inductor cannot build CPU kernels
            has_compiler = False
    return Capabilities(is_cuda=device.is_cuda, gpu_name=name, compute_capability=capability,
                        has_torchao=importlib.util.find_spec("torchao") is not None, has_compiler=has_compiler)


# --- applying -----------------------------------------------------------------------------------------------------


def quantize_fp8(module: torch.nn.Module) -> None:
    """torchao's dynamic fp8 (activations and weights, per-row scales) on `module`'s linear layers, in place."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


def compile_module(module: torch.nn.Module, mode: str, *, backend: str = "inductor") -> int:
    """Compile `module` in place (`regional`: its repeated blocks; `full`: the whole module). Returns how many
    modules were handed to torch.compile. Compilation itself is lazy: it runs on the first call (the warm-up).
    (`backend`: tests trace with dynamo's `eager` backend to count graphs in seconds.)"""
    if mode == "off":
        return 0
    if mode == "full":
        module.compile(fullgraph=False, backend=backend)
        return 1
    declared = getattr(module, "_repeated_blocks", None)
    if declared and hasattr(module, "compile_repeated_blocks"):
        module.compile_repeated_blocks(fullgraph=True, backend=backend)
        return sum(1 for sub in module.modules() if type(sub).__name__ in declared)
    count = 0
    for sub in module.modules():
        if type(sub).__name__ in REGION_CLASSES:
            sub.compile(fullgraph=True, backend=backend)
            count += 1
    return count


def apply(pipe, acceleration: Acceleration, *, decoder: Callable[[], torch.nn.Module] | None = None) -> dict:
    """Quantize, then mark for compilation, `pipe.unet` (and with `full`, the VAE decoder given by `decoder`).
    Returns what was done, for the start-up report."""
    done: dict = {}
    if acceleration.quantize == "fp8":
        quantize_fp8(pipe.unet)
        done["quantized"] = "unet linear layers: fp8 dynamic"
    done["compiled_modules"] = compile_module(pipe.unet, acceleration.compile)
    if acceleration.compile == "full" and decoder is not None:
        compile_module(decoder(), "full")
        done["compiled_modules"] += 1
    return done


def unapply_compile(pipe) -> None:
    """Back to eager after a failed compile: torch.compile on a module in place wraps its forward; dropping the
    wrapper (`_compiled_call_impl`) restores the eager call on every module it touched."""
    for model in (pipe.unet, getattr(pipe, "vae", None)):
        for sub in model.modules() if model is not None else ():
            sub._compiled_call_impl = None
