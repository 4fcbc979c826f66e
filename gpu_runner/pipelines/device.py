"""Which device and number format the runner's pipelines use: the first CUDA GPU in half precision when there is
one (and the operator did not force the CPU), else the CPU in full precision. Decided once per process."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda:0" or "cpu", as torch spells it
    dtype: torch.dtype
    name: str  # what the runner reports and keys its pace figures by, e.g. "cuda:NVIDIA H100 80GB HBM3"

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def select_device(force_cpu: bool, memory_fraction: float) -> DeviceChoice:
    """Pick the device; on CUDA, cap this process at `memory_fraction` of the GPU's memory (0 < fraction <= 1)."""
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    if force_cpu or not torch.cuda.is_available():
        # fp16 on CPU is slow and some kernels lack it; the tiny models are fast in fp32 anyway.
        return DeviceChoice(device="cpu", dtype=torch.float32, name="cpu")
    index = torch.cuda.current_device()
    # The cap turns a runaway allocation into an OOM error in this process instead of starving a neighbour.
    torch.cuda.set_per_process_memory_fraction(memory_fraction, device=index)
    return DeviceChoice(
        device=f"cuda:{index}", dtype=torch.float16, name=f"cuda:{torch.cuda.get_device_name(index)}"
    )


def free_device_bytes(device: DeviceChoice) -> int | None:
    """Free memory on a CUDA device right now; None on the CPU (no batching gain, no residency question)."""
    if not device.is_cuda:
        return None
    return torch.cuda.mem_get_info()[0]
