"""EngineRegistry: one adapter per engine this LMForge can run, and the choice of one per model.

The choice itself is the table in prober/engine_choice.py; the registry adds what the manager knows: the engines
with an adapter here, and a per-model override from config (`[engines]`, model name to engine).
"""

from __future__ import annotations

from manager.config import Paths, Settings
from manager.config_remote import REMOTE_FORMAT
from manager.engines.base import EngineAdapter, EngineMissing
from manager.engines.llamacpp import LlamaCppAdapter
from manager.engines.mlx import MlxAdapter
from manager.engines.remote import REMOTE, RemoteAdapter
from manager.engines.sglang import SglangAdapter
from manager.protocol import HardwareSnapshot, ModelEntry, SlotKind
from prober.engine_choice import Choice, choose_for


class EngineRegistry:
    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings = settings
        adapters: list[EngineAdapter] = [LlamaCppAdapter(settings, paths), MlxAdapter(settings, paths)]
        adapters.append(SglangAdapter(settings, paths))
        adapters.append(RemoteAdapter(settings))
        self.adapters: dict[str, EngineAdapter] = {a.name: a for a in adapters}

    def get(self, engine: str) -> EngineAdapter:
        try:
            return self.adapters[engine]
        except KeyError:
            raise EngineMissing(f"this LMForge has no adapter for the engine {engine!r}") from None

    def choose(self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None,
               exclude: tuple[str, ...] = ()) -> Choice:
        if entry.format == REMOTE_FORMAT:
            if exclude:
                return Choice("", f"the remote engine at {entry.path} failed")
            return Choice(REMOTE, f"[[remote]] in config: served by {entry.path}")
        override = self.settings.engines.get(entry.name, "")
        return choose_for(entry.format, kind, hardware, override=override, exclude=exclude,
                          available=tuple(self.adapters))

    def parks(self, engine: str) -> bool:
        adapter = self.adapters.get(engine)
        return adapter is not None and adapter.parks

    def parallel(self, engine: str, model: str = "") -> int:
        adapter = self.adapters.get(engine)
        if isinstance(adapter, RemoteAdapter) and model in adapter.models:
            return adapter.parallel_of(model)
        return adapter.parallel if adapter is not None else 1
