"""Blocking reads the manager makes off its loop, in a worker thread: engine memory, log upkeep."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping

from manager.config import ENGINE_LOG_PREFIX, Settings
from manager.logfiles import rotate_if_large
from manager.process import groups_memory
from prober.probes import nvidia
from prober.probes.nvidia_container import EngineVram

MiB = 1024**2


class EstimatedReading(tuple[int, int]):
    """(held, private) VRAM bytes worked out from the GPUs' totals, not read per process (containers).

    It unpacks as every reading does, so the table takes it as it takes the others; `estimated` and `basis`
    say that it is an estimate and how it was made.
    """

    estimated = True
    basis: str

    def __new__(cls, nbytes: int, basis: str) -> EstimatedReading:
        reading = super().__new__(cls, (nbytes, nbytes))
        reading.basis = basis
        return reading


_vram: EngineVram | None = None
_vram_lock = threading.Lock()


def engine_vram() -> EngineVram:
    """The manager's one EngineVram, over the process-wide NVML session: its baseline lasts between readings."""
    global _vram
    with _vram_lock:
        if _vram is None:
            _vram = EngineVram(nvidia.session().gpu_samples)
        return _vram


def engine_memory(pids: list[int], on_gpu: bool,
                  plans: Mapping[int, int] | None = None) -> dict[int, tuple[int, int]]:
    """(held, private) bytes per engine pid, in the unit the budget counts: VRAM on a GPU host, else RAM.

    On a GPU host, an engine NVML gives no per-process figure for (a container) gets an EstimatedReading, shared
    with the others by `plans` (planned bytes by pid). A reading with no engine running notes what the GPUs hold
    without ours, the baseline of those estimates (engines load only after the first hardware snapshot, unless
    memory_budget_mb is set). A CPU host never asks NVML: it would cost a failed initialisation every reading.
    """
    if on_gpu:
        return vram_readings(engine_vram(), pids, plans)
    return groups_memory(pids)


def vram_readings(vram: EngineVram, pids: list[int],
                  plans: Mapping[int, int] | None = None) -> dict[int, tuple[int, int]]:
    """One reading of `vram` in the table's shape: NVML's figures as they are, estimates marked as such."""
    return {pid: EstimatedReading(figure.bytes, figure.estimate) if figure.estimated else (figure.bytes, figure.bytes)
            for pid, figure in vram.read(pids, plans).items()}


def rotate_engine_logs(logs: Path, settings: Settings) -> None:
    for path in logs.glob(f"{ENGINE_LOG_PREFIX}*.log"):
        rotate_if_large(path, settings.log_max_mb * MiB, settings.log_backups)
