"""A runner's start-up as numbers: each phase (device, load, quantize, load artifacts, compile, save artifacts,
warm-up) timed and logged as it ends, kept in a `StartupReport` that the health port shows on `/healthz`, and the
sequence that makes an SDXL pipeline fast before its first job (`prepare_sdxl`).

The sequence, with `acceleration.choose()`'s settings: quantize; mark for compilation; if compiling, look for a
saved artifact under this start's `ArtifactKey` (compile_cache.py) and load it; a warm-up render per configured
shape (that is where torch compiles, from the loaded artifacts when there were any, so it takes a fraction of the
time); save the artifacts when they were compiled here. A missing artifact with `fallback="eager"` skips
compilation; a compile that fails falls back to eager. Neither stops the runner from serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import structlog
import torch

from gpu_runner.pipelines import acceleration, compile_cache
from gpu_runner.pipelines.compile_cache import ArtifactStore
from gpu_runner.pipelines.specs import RenderSpec

log = structlog.get_logger(__name__)

WARMUP_STEPS = 2
WARMUP_GUIDANCE = 5.0  # > 1: classifier-free guidance doubles the UNet's batch, as every styled render does


class StartupReport:
    """Phases in the order they ran, and facts about the start (settings in force, artifact outcome). Written by the
    loading thread, read by health probes: a lock keeps each snapshot whole."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._phases: list[dict] = []
        self._facts: dict = {}
        self._current: str | None = None

    @contextmanager
    def phase(self, name: str, **fields) -> Iterator[None]:
        begun = self._clock()
        with self._lock:
            self._current = name
        outcome = "ok"
        try:
            yield
        except BaseException:
            outcome = "failed"
            raise
        finally:
            seconds = round(self._clock() - begun, 3)
            with self._lock:
                self._phases.append({"phase": name, "seconds": seconds, "outcome": outcome, **fields})
                self._current = None
            log.info("startup_phase", phase=name, seconds=seconds, outcome=outcome, **fields)

    def note(self, **facts) -> None:
        with self._lock:
            self._facts.update(facts)

    def snapshot(self) -> dict:
        with self._lock:
            return {"since_start_s": round(self._clock() - self._started, 3), "current": self._current,
                    "phases": [dict(p) for p in self._phases], **self._facts}


@dataclass(frozen=True)
class CompilePlan:
    """What the settings ask of start-up: `acceleration.choose()`'s inputs, the warm-up shapes, the stores."""

    compile: str  # auto | off | regional | full
    quantize: str  # auto | none | fp8
    fallback: str  # compile | eager: what a missing artifact means
    shapes: list[tuple[int, int, int]]  # (width, height, batch)
    stores: list[ArtifactStore]


def prepare_sdxl(pipe, device, plan: CompilePlan, report: StartupReport,
                 render: Callable[[object, list[RenderSpec]], object],
                 before_compile: Callable[[object], dict] | None = None) -> acceleration.Acceleration:
    """Make `pipe` fast before its first job (see the module docstring); `render(pipe, specs)` is the runner's own
    render call (adapters included), so the warm-up compiles exactly the graphs jobs run. `before_compile(pipe)`
    changes the UNet's structure for good before anything is traced or keyed (the LoRA slot and the IP-Adapter,
    adapters.py `before_compile`: it returns facts for the report); if it fails the runner serves without it, and
    says so."""
    caps = acceleration.capabilities(device)
    chosen = acceleration.choose(plan.compile, plan.quantize, caps)
    report.note(device=caps.gpu_name, acceleration=chosen.as_dict())
    log.info("acceleration_chosen", device=caps.gpu_name, **chosen.as_dict())
    if chosen.quantize == "fp8":
        with report.phase("quantize", mode="fp8"):
            acceleration.quantize_fp8(pipe.unet)
    if chosen.compile == "off":
        report.note(artifacts="not compiling")
        return chosen

    if before_compile is not None:
        try:
            with report.phase("adapter_slots"):
                report.note(**before_compile(pipe))
        except Exception as exc:  # noqa: BLE001 - adapter renders then recompile; every other render is unchanged
            log.error("adapter_slots_failed", error=repr(exc), exc_info=True)
            report.note(adapter_slots_error=repr(exc)[:500])
    key = compile_cache.artifact_key(pipe.unet, device_name=caps.gpu_name, compile_mode=chosen.compile,
                                     quantize=chosen.quantize, dtype=device.dtype, shapes=plan.shapes)
    with report.phase("load_artifacts", key=key.digest):
        loaded = compile_cache.load(key, plan.stores)
    report.note(artifacts=loaded.outcome, artifact_store=loaded.store, artifact_detail=loaded.detail,
                artifact_key=key.digest)
    if loaded.outcome != "loaded" and plan.fallback == "eager":
        report.note(acceleration={**chosen.as_dict(), "compile": "off",
                                  "compile_reason": f"no artifact ({loaded.outcome}) and the fallback is eager"})
        return acceleration.Acceleration("off", chosen.quantize, "no artifact, fallback eager", chosen.quantize_reason)

    acceleration.compile_module(pipe.unet, chosen.compile)
    pipe._soul_compiled = chosen.compile  # adapters.py hot-swaps LoRAs into a compiled UNet instead of adding them
    if chosen.compile == "full":
        acceleration.compile_module(pipe.vae.decoder, "full")
    try:
        with report.phase("compile", mode=chosen.compile, from_artifacts=loaded.outcome == "loaded"):
            warm_up(pipe, plan.shapes, render)
    except Exception as exc:  # noqa: BLE001 - a compiler failure must never stop the runner: serve eager
        log.error("compile_failed_serving_eager", error=repr(exc), exc_info=True)
        acceleration.unapply_compile(pipe)
        pipe._soul_compiled = None
        torch._dynamo.reset()
        report.note(artifacts="compile failed", compile_error=repr(exc)[:500])
        return acceleration.Acceleration("off", chosen.quantize, f"compile failed: {exc!r}"[:200],
                                         chosen.quantize_reason)
    if loaded.outcome != "loaded":
        with report.phase("save_artifacts"):
            size = compile_cache.save(key, plan.stores)
        report.note(artifacts="compiled and saved" if size else "compiled, nothing to save", artifact_bytes=size)
    return chosen


def warm_up(pipe, shapes: list[tuple[int, int, int]], render: Callable[[object, list[RenderSpec]], object]) -> None:
    for width, height, batch in shapes:
        render(pipe, [RenderSpec("warm-up", "", width, height, WARMUP_STEPS, WARMUP_GUIDANCE, seed)
                      for seed in range(batch)])
