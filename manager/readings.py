"""Blocking reads the manager makes off its loop, in a worker thread: engine memory, log upkeep."""

from __future__ import annotations

from pathlib import Path

from manager.config import ENGINE_LOG_PREFIX, Settings
from manager.logfiles import rotate_if_large
from manager.process import groups_memory
from prober.probes.nvidia import gpu_memory_by_pid

MiB = 1024**2


def engine_memory(pids: list[int], on_gpu: bool) -> dict[int, tuple[int, int]]:
    """(held, private) bytes per engine pid, in the unit the budget counts: VRAM on a GPU host, else RAM."""
    if on_gpu:
        vram = gpu_memory_by_pid()  # one NVML session for the process, not one per reading
        return {pid: (vram[pid], vram[pid]) for pid in pids if pid in vram}
    return groups_memory(pids)


def rotate_engine_logs(logs: Path, settings: Settings) -> None:
    for path in logs.glob(f"{ENGINE_LOG_PREFIX}*.log"):
        rotate_if_large(path, settings.log_max_mb * MiB, settings.log_backups)

