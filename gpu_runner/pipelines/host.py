"""Holds the loaded pipelines of this runner: built or loaded on first use, then kept for the process's life.
Loading is serialized so two workers never load the same weights twice. Loading SDXL includes making it fast
(quantize, compile from saved artifacts: `startup.prepare_sdxl`), each phase timed in `self.startup`, the report
the health port shows."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog

from gpu_runner.errors import InvalidRenderSpec
from gpu_runner.pipelines.startup import StartupReport
from gpu_runner.settings import RunnerSettings

log = structlog.get_logger(__name__)


# The shape SDXL renders unless a job asks otherwise: what is compiled at start when SOUL_COMPILE_SHAPES is unset.
NATIVE_SDXL_SIDE = 1024


class ModelHost:
    def __init__(self, settings: RunnerSettings, artifact_stores: list | None = None):
        """`artifact_stores`: where compile artifacts are kept beyond the VM's disk (the bucket), tried after it."""
        self._settings = settings
        self._lock = threading.Lock()
        self._device = None
        self._sdxl: Any = None
        self._svd: Any = None
        self._adapters: Any = None
        self._fingerprint: str | None = None
        self._checker: Any = None
        self._preview_decoder: Any = None
        self._extra_stores = list(artifact_stores or [])
        self.startup = StartupReport()
        self.acceleration = None  # acceleration.Acceleration once SDXL is loaded

    @property
    def device(self):
        if self._device is None:
            from gpu_runner.pipelines.device import select_device

            self._device = select_device(self._settings.force_cpu, self._settings.device_memory_fraction)
        return self._device

    @property
    def tiny_sdxl(self) -> bool:
        return self._settings.sdxl_model is None

    @property
    def tiny_svd(self) -> bool:
        return self._settings.svd_model is None

    def sdxl(self):
        with self._lock:
            if self._sdxl is None:
                self._sdxl = self._load_sdxl()
            return self._sdxl

    @property
    def adapters(self):
        """The SDXL pipeline's LoRA/IP-Adapter/scheduler state (gpu_runner/pipelines/adapters.py)."""
        with self._lock:
            return self._adapter_host()

    def _adapter_host(self):  # under self._lock
        if self._adapters is None:
            from gpu_runner.pipelines.adapters import AdapterHost

            s = self._settings
            self._adapters = AdapterHost(
                cache_dir=Path(s.model_cache_dir), ip_adapter_model=s.ip_adapter_model,
                ip_adapter_weight_name=s.ip_adapter_weight_name, resident=s.lora_resident,
                budget_bytes=int(s.lora_budget_mb * 1024 * 1024), hotswap=s.lora_hotswap,
                hotswap_rank=s.lora_hotswap_rank, slot_targets=s.lora_slot_target_list,
                tiny_ip_adapter=self.tiny_sdxl,
            )
        return self._adapters

    def weights_fingerprint(self) -> str:
        """Of the SDXL weights this runner serves (computed once)."""
        if self._fingerprint is None:
            from gpu_runner.pipelines.fingerprint import weights_fingerprint

            if self._settings.sdxl_model is None:
                from gpu_runner.pipelines.tiny import TINY_SDXL_NAME

                model = Path(self._settings.model_cache_dir) / TINY_SDXL_NAME
            else:
                model = Path(self._settings.sdxl_model).expanduser()
            self._fingerprint = weights_fingerprint(model)
        return self._fingerprint

    def checker(self):
        """The safety checker (pipelines/safety.py), on the render device."""
        with self._lock:
            if self._checker is None:
                from gpu_runner.pipelines.safety import load_checker

                self._checker = load_checker(self._settings.safety_model, Path(self._settings.model_cache_dir),
                                             self.device.device, self.device.dtype)
                log.info("loaded_safety_checker", model=self._checker.name, device=self.device.name)
            return self._checker

    def preview_decoder(self):
        """Latents -> small previews: TAESD-XL when SOUL_PREVIEW_MODEL is set, else the linear approximation."""
        with self._lock:
            if self._preview_decoder is None:
                from gpu_runner.pipelines import previews

                side = self._settings.preview_max_side
                if self._settings.preview_model:
                    taesd = previews.load_taesd(self._settings.preview_model, self.device.device, self.device.dtype)
                    self._preview_decoder = previews.taesd_decoder(taesd, side)
                else:
                    self._preview_decoder = previews.linear_decoder(side)
            return self._preview_decoder

    def warm_sdxl(self) -> None:
        """Load (and compile) SDXL now and render once, so the first job pays for neither."""
        from gpu_runner.pipelines.startup import warm_up

        pipe = self.sdxl()
        if self.acceleration is not None and self.acceleration.compile == "off":  # compiled ones warmed up already
            with self.startup.phase("warmup"):
                warm_up(pipe, self.compile_shapes()[:1], self.render_plain)
        self.startup.note(ready=True)

    def render_plain(self, pipe, specs: list) -> list:
        """`specs` (no LoRA, no references) through the runner's own render call, adapters included: a UNet that
        holds the IP-Adapter or the LoRA slot is called as a job calls it (the warm-up, the cold-start benchmark)."""
        from gpu_runner.pipelines.sdxl import render_images

        def no_objects(name: str) -> bytes:
            raise InvalidRenderSpec(f"a plain render reads no objects, asked for {name!r}")

        adapters = self._adapter_host()  # unlocked: the warm-up runs while _load_sdxl holds the lock
        return render_images(pipe, specs, prepare=lambda p: adapters.prepare(p, specs[0], no_objects).kwargs)

    def compile_shapes(self) -> list[tuple[int, int, int]]:
        from gpu_runner.pipelines.specs import parse_compile_shapes

        shapes = parse_compile_shapes(self._settings.compile_shapes)
        if shapes:
            return shapes
        side = self._settings.tiny_max_side if self.tiny_sdxl else NATIVE_SDXL_SIDE
        return [(side, side, 1)]

    def artifact_stores(self) -> list:
        from gpu_runner.pipelines.compile_cache import LocalArtifactStore

        folder = self._settings.compile_cache_dir or Path(self._settings.model_cache_dir) / "compile"
        return [LocalArtifactStore(Path(folder)), *self._extra_stores]

    def _load_sdxl(self):
        from gpu_runner.pipelines.sdxl import load_sdxl
        from gpu_runner.pipelines.startup import CompilePlan, prepare_sdxl

        with self.startup.phase("device"):
            device = self.device
        log.info("loading_sdxl", model=self._settings.sdxl_model or "tiny", device=device.name)
        with self.startup.phase("load", model=self._settings.sdxl_model and Path(self._settings.sdxl_model).name
                                or "tiny"):
            pipe = load_sdxl(self._settings.sdxl_model, Path(self._settings.model_cache_dir), device)
            pipe.set_progress_bar_config(disable=True)  # progress goes to the job document
        plan = CompilePlan(compile=self._settings.compile, quantize=self._settings.quantize,
                           fallback=self._settings.compile_fallback, shapes=self.compile_shapes(),
                           stores=self.artifact_stores())
        self.acceleration = prepare_sdxl(pipe, device, plan, self.startup, self.render_plain,
                                         before_compile=self._adapter_host().before_compile)
        return pipe

    def svd(self):
        """Loaded into host memory first; then resident on the GPU beside SDXL when free memory holds it with
        headroom, else run with model CPU offload (the policy in `svd.residency_policy`)."""
        with self._lock:
            if self._svd is None:
                from gpu_runner.pipelines.device import free_device_bytes
                from gpu_runner.pipelines.svd import apply_residency, load_svd, pipeline_bytes, residency_policy

                pipe = load_svd(
                    self._settings.svd_model, Path(self._settings.model_cache_dir), "cpu", self.device.dtype
                )
                free = free_device_bytes(self.device)
                # SDXL, if loaded, already occupies its share of the device: only SVD's bytes must still fit.
                policy = residency_policy(free, sdxl_bytes=0, svd_bytes=pipeline_bytes(pipe))
                apply_residency(pipe, policy, self.device.device)
                pipe.set_progress_bar_config(disable=True)
                log.info("loaded_svd", model=self._settings.svd_model or "tiny", device=self.device.name,
                         residency=policy)
                self._svd = pipe
            return self._svd


def quiet_progress_bars() -> None:
    """diffusers and transformers draw tqdm bars on every load and render: noise in a service's JSON logs.
    Progress is reported on the job document instead."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
