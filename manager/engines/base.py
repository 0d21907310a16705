"""What the manager needs from an engine adapter: its command line, health path and memory plan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from manager.protocol import HardwareSnapshot, ModelEntry, SlotKind


class EngineMissing(Exception):
    """The engine is not installed and cannot be installed here; the message says how to fix it."""


@dataclass(frozen=True)
class MemoryPlan:
    """What a load will cost, estimated before it starts."""

    weights: int
    kv_cache: int
    compute: int
    ctx_size: int
    gpu_layers: int = 0
    ctx_max: int = 0  # the context the model was trained on; 0: unknown. No ask gets more.
    # What an engine measured right after ready may still grow by as its graph
    # buffers, checkpoints and host prompt cache fill: in RAM (what a CPU host's
    # budget counts) and in VRAM (what a GPU host's counts). See manager/memory.py.
    growth: int = 0
    growth_gpu: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute


class EngineAdapter(Protocol):
    name: str
    health_path: str
    load_markers: tuple[tuple[str, str], ...]  # (text of a log line, the load stage it opens): load_watch.py
    parallel: int  # requests one engine serves at once: the leases its slot grants before queueing

    def supports(self, entry: ModelEntry) -> bool:
        """Whether this engine can run the model's weight format."""

    def plan(
        self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None, vram_budget: int,
        num_ctx: int = 0,
    ) -> MemoryPlan:
        """Estimate memory and choose context size (at least `num_ctx`, see manager/context.py) and GPU layers."""

    def command(self, binary: Path, entry: ModelEntry, kind: SlotKind, port: int, plan: MemoryPlan, *,
                threads: int = 0) -> list[str]:
        """The argv that serves `entry` as `kind` on 127.0.0.1:`port`, computing on `threads` CPU threads (0: the
        engine's own choice)."""

    def find_binary(self) -> Path | None:
        """The installed engine executable, or None when it still has to be installed."""
