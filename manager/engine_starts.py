"""EngineStarts: the engine side of starting a slot, through the adapter of the engine chosen for it.

A slot names its engine (the choice table, prober/engine_choice.py); its adapter (manager/engines/) plans the
memory, says how the runner watches it (health path, load markers, failures it works around) and builds its
command line and environment. An engine not installed yet is installed once, however many loads wait for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Callable, cast

import aiohttp

from manager.config import Paths, Settings
from manager.engines.base import EngineAdapter, EngineMissing, MemoryPlan, ParkingAdapter
from manager.engines.registry import EngineRegistry
from manager.engines.remote import REMOTE, RemoteAdapter, RemoteRunner
from manager.load_watch import watch_config
from manager.protocol import HardwareSnapshot, LoadProgressEvent, Severity
from manager.runner import Launch, LoadFailure, RunnerConfig
from manager.slots import Slot

log = logging.getLogger("lmforge.manager")


class EngineStarts:
    def __init__(self, registry: EngineRegistry, paths: Paths, publish: Callable[[object], None]) -> None:
        self.registry, self.paths, self.publish = registry, paths, publish
        self._installs: dict[str, asyncio.Future[Path]] = {}

    def adapter(self, slot: Slot) -> EngineAdapter:
        return self.registry.get(slot.engine)

    def plan(self, slot: Slot, hardware: HardwareSnapshot | None, vram: int) -> MemoryPlan:
        """Blocking (it reads the model's files): run it off the loop."""
        return self.adapter(slot).plan(slot.entry, slot.kind, hardware, vram, slot.num_ctx)

    def runner_config(self, slot: Slot, settings: Settings) -> RunnerConfig:
        s, plan, adapter = settings, slot.plan, self.adapter(slot)
        about = {"model": slot.model, "kind": str(slot.kind), "generation": slot.generation, "engine": slot.engine,
                 "plan": _as_dict(plan), "threads": slot.threads}
        return RunnerConfig(
            load_timeout_s=s.load_timeout_s, stop_grace_s=s.stop_grace_s, health_interval_s=s.health_interval_s,
            health_failures=s.health_failures, health_path=adapter.health_path, pid_dir=self.paths.engine_pids,
            log_path=self.paths.engine_log(slot.file_slug), about=about,
            watch=watch_config(s.load_stall_s, s.load_stall_s_per_gb, slot.entry, adapter.load_markers),
            engine=adapter.name, workaround=adapter.workaround,
            **_turns(adapter),
        )

    def remote_runner(self, slot: Slot, config: RunnerConfig, session: aiohttp.ClientSession,
                      post: Callable[[object], None]) -> RemoteRunner:
        """The watch over a `[[remote]]` model's engine, which runs elsewhere."""
        remote = self.registry.get(REMOTE)
        assert isinstance(remote, RemoteAdapter)
        return RemoteRunner(slot.key, slot.generation, slot.base_url, remote.health_path_of(slot.model),
                            remote.headers(slot.model), config, session, slot.stop_event, post)

    async def launch(self, slot: Slot, port: int, workarounds: tuple[str, ...],
                     hardware: Callable[[], HardwareSnapshot | None]) -> Launch:
        """How to start the slot's engine on `port`; an engine that cannot be installed is the load's failure."""
        assert slot.plan is not None
        adapter = self.adapter(slot)
        try:
            binary = adapter.find_binary() or await self._install(adapter, slot, hardware)
        except EngineMissing as exc:
            raise LoadFailure(f"{adapter.name} is not installed and could not be: {exc}", Severity.USER_ERROR) from None
        argv = await asyncio.to_thread(adapter.command, binary, slot.entry, slot.kind, port, slot.plan,
                                       threads=slot.threads, workarounds=workarounds)
        return Launch(argv, adapter.environment(slot.plan))

    async def _install(self, adapter: EngineAdapter, slot: Slot,
                       hardware: Callable[[], HardwareSnapshot | None]) -> Path:
        """First use of an engine: install it once, however many loads wait for it; a failed install is tried again
        by the next load."""
        running = self._installs.get(adapter.name)
        if running is None or (running.done() and running.exception()):
            running = self._installs[adapter.name] = asyncio.ensure_future(self._run_install(adapter, slot, hardware))
        return await asyncio.shield(running)

    async def _run_install(self, adapter: EngineAdapter, slot: Slot,
                           hardware: Callable[[], HardwareSnapshot | None]) -> Path:
        from prober.detect import take_snapshot

        loop = asyncio.get_running_loop()
        snapshot = hardware() or await asyncio.to_thread(take_snapshot)

        def progress(pct: float | None, line: str) -> None:
            detail = f"{pct:.0f}% {line}" if pct is not None else line
            event = LoadProgressEvent(model=slot.model, kind=slot.kind, stage="installing_engine", detail=detail)
            loop.call_soon_threadsafe(self.publish, event)

        log.info("installing %s for %s", adapter.name, slot.label)
        return await asyncio.to_thread(adapter.install, snapshot, progress)


def _turns(adapter: EngineAdapter) -> dict[str, object]:
    """What the runner needs of an engine that parks (ParkingAdapter); nothing for one that does not."""
    if not adapter.parks:
        return {}
    parking = cast(ParkingAdapter, adapter)
    return {"turns": {"park": parking.park, "resume": parking.resume},
            "parked_health_path": parking.parked_health_path}


def _as_dict(plan: MemoryPlan | None) -> dict[str, object] | None:
    return dataclasses.asdict(plan) if plan is not None else None
