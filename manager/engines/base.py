"""What the manager needs from an engine adapter (DESIGN.md, "Engines"): its install, command line and environment,
readiness probe, the kinds it serves, its memory plan, and how to read its failures.

The registry (registry.py) holds one adapter per engine; the choice table (prober/engine_choice.py) says which one
serves a model. Nothing outside an adapter knows an engine's flags or quirks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import aiohttp

from manager.protocol import HardwareSnapshot, ModelEntry, SlotKind
from prober.engine_choice import LLAMA_CPP, Choice, choose_for


class EngineMissing(Exception):
    """The engine is not installed and cannot be installed here; the message says how to fix it."""


class PlanRefused(Exception):
    """A load that cannot be planned for a reason its message says whole, with its fix (a config that names a
    model that is not installed, say); any other error of a plan is the model file's."""


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
    # Planned for a host with discrete GPUs: gpu_layers is then passed as it is, 0 included, so that the engine's
    # own fitting never offloads what the budget did not count.
    gpu_host: bool = False
    # Placement on NVIDIA GPUs (manager/engines/llamacpp_gpus.py, sglang.py): the GPUs the engine is pinned to, by
    # NVML index ((): not pinned), and for llama.cpp across several of them each one's share of the layers.
    gpus: tuple[int, ...] = ()
    split: tuple[float, ...] = ()
    # SGLang's --mem-fraction-static on those GPUs (0: not an SGLang plan, or one recorded before it was kept here).
    mem_fraction: float = 0.0
    # The draft model a chat slot decodes speculatively with (its GGUF path; "": none) and its layers on the GPU.
    # Its weights and caches are counted in weights, kv_cache and compute above.
    draft: str = ""
    draft_gpu_layers: int = 0

    def __post_init__(self) -> None:
        # Engine records keep the plan as JSON (manager/adoption.py), where tuples come back as lists.
        object.__setattr__(self, "gpus", tuple(self.gpus))
        object.__setattr__(self, "split", tuple(self.split))

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute


# An install's progress: (percent or None, the line to show).
Progress = Callable[[float | None, str], None]


class EngineAdapter(Protocol):
    name: str
    formats: frozenset[str]  # the weight formats it reads (ModelEntry.format)
    kinds: frozenset[SlotKind]  # what it can serve
    health_path: str  # answers 200 once the engine serves
    load_markers: tuple[tuple[str, str], ...]  # (text of a log line, the load stage it opens): load_watch.py
    parallel: int  # requests one engine serves at once: the leases its slot grants before queueing
    # Whether it can release its GPU memory and keep its process (SGLang): such an adapter is a ParkingAdapter too,
    # and eviction parks it rather than unloading it (manager/table_parking.py).
    parks: bool
    # How it hands out a model's reasoning: "field" (reasoning_content, parsed by the engine) or "tags" (inline
    # <think> in the content, split by the gateway: gateway/thinking/tags.py). The gateway reads both.
    reasoning: str


    def plan(
        self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None, vram_budget: int,
        num_ctx: int = 0,
    ) -> MemoryPlan:
        """Estimate memory and choose context size (at least `num_ctx`, see manager/context.py) and GPU layers."""

    def command(self, binary: Path, entry: ModelEntry, kind: SlotKind, port: int, plan: MemoryPlan, *,
                threads: int = 0, workarounds: tuple[str, ...] = ()) -> list[str]:
        """The argv that serves `entry` as `kind` on 127.0.0.1:`port`, computing on `threads` CPU threads (0: the
        engine's own choice), with the `workarounds` earlier failed starts asked for (see `workaround`)."""

    def environment(self, plan: MemoryPlan) -> dict[str, str]:
        """Variables set for the engine on top of the manager's own (e.g. CUDA_VISIBLE_DEVICES)."""

    def workaround(self, returncode: int, tail: str, applied: tuple[str, ...]) -> str | None:
        """A workaround to start again with after the engine died this way while loading; None: it failed."""

    def find_binary(self) -> Path | None:
        """The installed engine executable (its Python, for one in its own virtual environment), or None when it
        still has to be installed."""

    def install(self, hardware: HardwareSnapshot, report: Progress) -> Path:
        """Install the engine (blocking, minutes at worst) and return what find_binary will; EngineMissing when it
        cannot be installed here, saying why."""


class ParkingAdapter(EngineAdapter, Protocol):
    """An engine that parks: the runner calls these between two health probes (manager/runner.py)."""

    parked_health_path: str  # answers while parked without generating (its health_path may generate)

    async def park(self, session: aiohttp.ClientSession, base_url: str) -> None:
        """Release its GPU memory, keeping the process; raises, saying why, when it cannot."""

    async def resume(self, session: aiohttp.ClientSession, base_url: str) -> None:
        """Take its GPU memory back; it serves again after."""


class Engines(Protocol):
    """What the slot table asks of the engines: which serves a model (registry.py), and how many requests at once."""

    def choose(self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None,
               exclude: tuple[str, ...] = ()) -> Choice:
        """The engine for `entry` served as `kind`, not one of `exclude` (those that failed it)."""

    def parallel(self, engine: str, model: str = "") -> int:
        """Requests one engine of this kind (serving `model`) serves at once: the leases its slot grants before
        queueing."""

    def parks(self, engine: str) -> bool:
        """Whether the engine can release its GPU memory and keep its process (manager/table_parking.py)."""


class LlamaCppOnly:
    """Engines for a table without a registry (tests that drive the table alone): llama.cpp, `parallel` at once."""

    def __init__(self, parallel: int = 1) -> None:
        self._parallel = parallel

    def choose(self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None,
               exclude: tuple[str, ...] = ()) -> Choice:
        return choose_for(entry.format, kind, hardware, exclude=exclude, available=(LLAMA_CPP,))

    def parallel(self, engine: str, model: str = "") -> int:
        return self._parallel

    def parks(self, engine: str) -> bool:
        return False
