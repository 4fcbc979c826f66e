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
        self._checker: Any = None
        self._preview_decoder: Any = None

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
