"""Holds the loaded pipelines of this runner: built or loaded on first use, then kept for the process's life.
Loading is serialized so two workers never load the same weights twice."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog

from gpu_runner.settings import RunnerSettings

log = structlog.get_logger(__name__)


class ModelHost:
    def __init__(self, settings: RunnerSettings):
        self._settings = settings
        self._lock = threading.Lock()
        self._device = None
        self._sdxl: Any = None
        self._svd: Any = None
        self._adapters: Any = None
        self._fingerprint: str | None = None

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
                from gpu_runner.pipelines.sdxl import load_sdxl

                log.info("loading_sdxl", model=self._settings.sdxl_model or "tiny", device=self.device.name)
                self._sdxl = load_sdxl(self._settings.sdxl_model, Path(self._settings.model_cache_dir), self.device)
                self._sdxl.set_progress_bar_config(disable=True)  # progress goes to the job document
            return self._sdxl

    @property
    def adapters(self):
        """The SDXL pipeline's LoRA/IP-Adapter/scheduler state (gpu_runner/pipelines/adapters.py)."""
        with self._lock:
            if self._adapters is None:
                from gpu_runner.pipelines.adapters import AdapterHost

                s = self._settings
                self._adapters = AdapterHost(
                    cache_dir=Path(s.model_cache_dir), ip_adapter_model=s.ip_adapter_model,
                    ip_adapter_weight_name=s.ip_adapter_weight_name, resident=s.lora_resident,
                    budget_bytes=int(s.lora_budget_mb * 1024 * 1024), hotswap=s.lora_hotswap,
                    hotswap_rank=s.lora_hotswap_rank,
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
