"""Where llama-server's offloaded layers go on a host with NVIDIA GPUs, and the flags and variables that say so.

Pure functions of the prober's GPU readings and the memory plan. A load that fits on one GPU is pinned to the
GPU with the most free VRAM; a larger one is spread over every GPU that can hold a layer, in proportion to what
each has free. A GPU here is its NVML index, which is PCI bus order: engines get CUDA_DEVICE_ORDER=PCI_BUS_ID so
that CUDA numbers the GPUs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from manager.engines.base import MemoryPlan
from manager.protocol import GpuInfo

MiB = 1024**2
# What the CUDA runtime and cuBLAS take on each GPU an engine uses before any model buffer. Not measured on
# these machines (no GPU); a few hundred MiB is what CUDA 12 contexts take on recent GPUs.
CUDA_CONTEXT = 512 * MiB


@dataclass(frozen=True)
class Placement:
    gpus: tuple[int, ...] = ()  # NVML indices, ascending; (): the engine sees what the manager sees
    split: tuple[float, ...] = ()  # each pinned GPU's share of the layers, when there are several


def visible_gpus(gpus: Sequence[GpuInfo], cuda_visible: str | None) -> tuple[GpuInfo, ...] | None:
    """The NVIDIA GPUs engines may use: every one, or those the manager's own CUDA_VISIBLE_DEVICES lists by index
    (read as NVML indices). None when that variable names GPUs another way (UUIDs, MIG instances): those are left
    to CUDA as they are, unpinned and unsplit."""
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


def usable(gpu: GpuInfo, fraction: float) -> int:
    """Bytes of a GPU's free VRAM an engine may fill: the budget's share of it, less the engine's CUDA context."""
    return int(gpu.vram_free * fraction) - CUDA_CONTEXT


def place(gpus: Sequence[GpuInfo], need: int, layer_bytes: int, fraction: float,
          cuda_visible: str | None = None) -> Placement:
    """Where `need` bytes of offloaded weights and caches go, made of layers of about `layer_bytes` each.

    `fraction` is the budget's memory_fraction; `cuda_visible` the manager's CUDA_VISIBLE_DEVICES (None: unset).
    """
    candidates = visible_gpus(gpus, cuda_visible)
    if not candidates or len(candidates) == 1 or need <= 0:
        return Placement()  # nothing to choose: the engine inherits the GPUs the manager has
    best = max(candidates, key=lambda g: (g.vram_free, -g.index))
    if need <= usable(best, fraction):
        return Placement(gpus=(best.index,))
    # A GPU that cannot hold one layer beside its CUDA context would only take the context's VRAM.
    taking = sorted((g for g in candidates if usable(g, fraction) >= max(layer_bytes, 1)), key=lambda g: g.index)
    if len(taking) <= 1:
        return Placement(gpus=(best.index,))
    room = [usable(g, fraction) for g in taking]
    return Placement(gpus=tuple(g.index for g in taking), split=tuple(round(r / sum(room), 4) for r in room))


def main_gpu(split: Sequence[float]) -> int:
    """The pinned GPU (its position: CUDA numbers pinned GPUs from 0) with the largest share: the most free VRAM."""
    return max(range(len(split)), key=lambda i: (split[i], -i))


def split_args(plan: MemoryPlan) -> list[str]:
    """llama-server's flags for a plan spread over several GPUs; none for one GPU or none."""
    if len(plan.split) < 2:
        return []
    return ["--tensor-split", ",".join(f"{share:g}" for share in plan.split), "--main-gpu", str(main_gpu(plan.split))]


def gpu_environment(plan: MemoryPlan) -> dict[str, str]:
    """The variables that pin an engine to the plan's GPUs, numbered as NVML numbers them."""
    if not plan.gpus:
        return {}
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in plan.gpus)}
