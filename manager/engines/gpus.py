"""Which NVIDIA GPUs engines may use and the variables that pin an engine to its plan's, for every engine that
places itself on GPUs (llama.cpp: llamacpp_gpus.py; SGLang: sglang.py).

A GPU here is its NVML index, which is PCI bus order: engines get CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA numbers
the GPUs the same way.
"""

from __future__ import annotations

from typing import Sequence

from manager.engines.base import MemoryPlan
from manager.protocol import GpuInfo


def visible_gpus(gpus: Sequence[GpuInfo], cuda_visible: str | None) -> tuple[GpuInfo, ...] | None:
    """The NVIDIA GPUs engines may use: every one, or those the manager's own CUDA_VISIBLE_DEVICES lists by index
    (read as NVML indices). None when that variable names GPUs another way (UUIDs, MIG instances): those cannot be
    matched to the prober's readings."""
    nvidia = tuple(g for g in gpus if g.vendor == "nvidia")
    if cuda_visible is None:
        return nvidia
    listed = [part.strip() for part in cuda_visible.split(",")]
    if not all(part.isdigit() for part in listed):
        return None
    # CUDA stops reading the list at the first index it does not know: so do we.
    by_index = {g.index: g for g in nvidia}
    shown: list[GpuInfo] = []
    for part in listed:
        if (gpu := by_index.get(int(part))) is None:
            break
        if gpu not in shown:
            shown.append(gpu)
    return tuple(shown)


def gpu_environment(plan: MemoryPlan) -> dict[str, str]:
    """The variables that pin an engine to the plan's GPUs, numbered as NVML numbers them; none for a plan that
    pins it to none (the engine sees what the manager sees)."""
    if not plan.gpus:
        return {}
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in plan.gpus)}
