"""Where llama-server's offloaded layers go on a host with NVIDIA GPUs, and the flags that say so.

Pure functions of the prober's GPU readings and the memory plan. A load that fits on one GPU is pinned to the
GPU with the most free VRAM; a larger one is spread over every GPU that can hold a layer, in proportion to what
each has free. Which GPUs may be used, and the variables that pin the engine, are gpus.py's (SGLang's too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from manager.engines.base import MemoryPlan
from manager.engines.gpus import visible_gpus
from manager.protocol import GpuInfo

MiB = 1024**2
# What the CUDA runtime and cuBLAS take on each GPU an engine uses before any model buffer. Not measured on
# these machines (no GPU); a few hundred MiB is what CUDA 12 contexts take on recent GPUs.
CUDA_CONTEXT = 512 * MiB


@dataclass(frozen=True)
class Placement:
    gpus: tuple[int, ...] = ()  # NVML indices, ascending; (): the engine sees what the manager sees
    split: tuple[float, ...] = ()  # each pinned GPU's share of the layers, when there are several


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
