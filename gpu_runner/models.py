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

    @property
    def device(self):
        if self._device is None:
            from gpu_runner.device import select_device

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
                from gpu_runner.sdxl import load_sdxl

                log.info("loading_sdxl", model=self._settings.sdxl_model or "tiny", device=self.device.name)
                self._sdxl = load_sdxl(self._settings.sdxl_model, Path(self._settings.model_cache_dir), self.device)
            return self._sdxl

    def svd(self):
        with self._lock:
            if self._svd is None:
                from gpu_runner.svd import load_svd

                log.info("loading_svd", model=self._settings.svd_model or "tiny", device=self.device.name)
                self._svd = load_svd(
                    self._settings.svd_model, Path(self._settings.model_cache_dir), self.device.device,
                    self.device.dtype,
                )
            return self._svd
