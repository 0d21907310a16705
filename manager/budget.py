"""The memory budget that loaded models must fit in, from the prober's snapshot.

Pure: the manager passes in the latest hardware snapshot and what its own engines
use now (free figures already exclude them, so they are added back).
"""

from __future__ import annotations

from typing import Sequence

from manager.config import Settings
from manager.protocol import BudgetInfo, HardwareSnapshot

MiB = 1024**2


def budget_total(
    settings: Settings, hardware: HardwareSnapshot | None, ours_in_use: int
) -> tuple[int, str]:
    """Bytes that models may occupy in all, and where the figure came from."""
    if settings.memory_budget_mb > 0:
        return settings.memory_budget_mb * MiB, "config"
    if hardware is None:
        return 0, "unknown"
    if hardware.gpus and not hardware.unified_memory:
        # Every GPU counts: llama.cpp splits layers across all visible devices.
        free = sum(g.vram_free for g in hardware.gpus) + ours_in_use
        return int(free * settings.memory_fraction), "vram"
    available = hardware.ram_available + ours_in_use
    if hardware.unified_memory:
        return int(available * settings.memory_fraction), "unified"
    reserve = settings.ram_reserve_mb * MiB
    return max(0, int((available - reserve) * settings.memory_fraction)), "ram"


def budget_info(settings: Settings, hardware: HardwareSnapshot | None, held: Sequence[tuple[int, int]]) -> BudgetInfo:
    """The budget and its use, from each of our engines' (private bytes in use, bytes charged)."""
    total, source = budget_total(settings, hardware, sum(private for private, _ in held))
    return BudgetInfo(total_bytes=total, used_bytes=sum(charged for _, charged in held), source=source,
                      max_loaded_models=settings.max_loaded_models)


def is_gpu_host(hardware: HardwareSnapshot | None) -> bool:
    return bool(hardware and hardware.gpus and not hardware.unified_memory)
