"""Adoption: a manager that starts after a crash takes over the engines its predecessor left serving.

Each engine's record (pid and start time, port, model, kind, generation, memory
plan, threads) says what it serves; one that still answers its health check becomes a ready
slot again, and the gateway's next hello declares the leases it still holds on it.
Anything else recorded is killed: no engine runs that no manager owns.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from manager.engines.base import EngineMissing, MemoryPlan
from manager.process import EngineProcess, answers_health, kill_group, recorded_engines
from manager.protocol import ModelEntry, SlotKind
from manager.runner import EngineRunner
from manager.slots import Slot
from prober.engine_choice import LLAMA_CPP

if TYPE_CHECKING:
    from manager.service import ManagerService

log = logging.getLogger("lmforge.manager")

HEALTH_TIMEOUT_S = 2.0


async def adopt_engines(service: "ManagerService") -> list[tuple[Slot, EngineRunner]]:
    """Ready slots and their supervising runners for every healthy recorded engine; the rest are killed."""
    records = await asyncio.to_thread(recorded_engines, service.paths.engine_pids)
    checks = [_check(service, path, data) for path, data in records]
    adopted = []
    for path, data, found in await asyncio.gather(*checks):
        pid = int(data["pid"])  # type: ignore[call-overload]
        if found is None:
            log.warning("killing engine pid %d left by an earlier manager: it cannot be adopted", pid)
            kill_group(pid)
            path.unlink(missing_ok=True)
            continue
        entry, plan = found
        # A record from before cores were budgeted has no thread count: llama-server then ran one per core.
        threads = int(data.get("threads", os.cpu_count() or 1))  # type: ignore[call-overload]
        engine = str(data.get("engine", LLAMA_CPP))  # a record from before engines were chosen per model
        kind, generation = SlotKind(data["kind"]), int(data["generation"])  # type: ignore[call-overload]
        slot = service.table.adopt(entry, kind, generation, pid, int(data["port"]),  # type: ignore[call-overload]
                                   plan, threads, engine)
        proc = EngineProcess.attach(pid, Path(str(data["log"])), path)
        runner = EngineRunner(slot.key, slot.generation, None, service.runner_config(slot), service.session,
                              slot.stop_event, service.post, slot.turns)
        runner.proc = proc
        adopted.append((slot, runner))
        log.info("adopted %s: pid %d on port %d (generation %d)", slot.label, pid, slot.port, slot.generation)
    service.act()
    return adopted


async def _check(service: "ManagerService", path: Path, data: dict[str, object]
                 ) -> tuple[Path, dict[str, object], tuple[ModelEntry, MemoryPlan] | None]:
    """The engine's store entry and memory plan when its record is complete and it answers; else None."""
    try:
        model, port = str(data["model"]), int(data["port"])  # type: ignore[call-overload]
        SlotKind(data["kind"])
        int(data["generation"])  # type: ignore[call-overload]
        plan = MemoryPlan(**data["plan"])  # type: ignore[arg-type]
        entry = await asyncio.to_thread(service.store.get, model)
    except Exception as exc:  # an old or damaged record, or a store that cannot be read
        log.warning("engine record %s cannot be adopted: %s", path.name, exc)
        return path, data, None
    if data.get("parked"):
        log.warning("engine record %s is of a parked engine: not adopted (its health probe would generate)", path.name)
        return path, data, None
    try:
        health_path = service.engines.get(str(data.get("engine", LLAMA_CPP))).health_path
    except EngineMissing as exc:
        log.warning("engine record %s cannot be adopted: %s", path.name, exc)
        return path, data, None
    url = f"http://127.0.0.1:{port}{health_path}"
    healthy = await answers_health(service.session, url, HEALTH_TIMEOUT_S)
    return path, data, (entry, plan) if healthy and entry is not None else None
