"""RemoteAdapter and RemoteRunner: a model served by an engine that already runs elsewhere (config `[[remote]]`,
manager/config_remote.py), such as an SGLang multi-node deployment, vLLM on a Ray cluster or another llama-server.

Nothing is installed or spawned here and no local memory is charged: its slot's plan is empty. Instead of an
EngineRunner the slot gets a RemoteRunner, which reports the engine ready once its health path answers, then
health-checks it as a runner supervises a local engine, and reports it failed when it stops answering.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

import aiohttp

from manager.config import Settings
from manager.config_remote import REMOTE_FORMAT, RemoteModel
from manager.engines.base import EngineMissing, MemoryPlan, Progress
from manager.process import answers_health
from manager.protocol import HardwareSnapshot, ModelEntry, Severity, SlotKind
from manager.runner import EngineFailed, EngineProgress, EngineReady, EngineStopped, RunnerConfig
from manager.slots import SlotKey

log = logging.getLogger("lmforge.runner")

REMOTE = "remote"
READY_S = 30.0  # how long a remote engine may take to answer its first health check


class RemoteAdapter:
    """The adapter side of a remote model: what the manager plans and probes; it never builds a command."""

    name = REMOTE
    formats = frozenset({REMOTE_FORMAT})
    kinds = frozenset(SlotKind)
    health_path = "/health"  # each model's own is in its [[remote]] entry: health_url()
    load_markers: tuple[tuple[str, str], ...] = ()
    parallel = 16  # each [[remote]] entry has its own: parallel_of()
    parks = False
    reasoning = "field"  # SGLang and vLLM parse reasoning when started with a reasoning parser; tags are split too

    def __init__(self, settings: Settings) -> None:
        self.models = {r.name: r for r in settings.remote}

    def model(self, name: str) -> RemoteModel:
        try:
            return self.models[name]
        except KeyError:
            raise EngineMissing(f"{name} is not in [[remote]] any more") from None


    def plan(self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None, vram_budget: int,
             num_ctx: int = 0) -> MemoryPlan:
        """Nothing held here: its memory is the remote machine's."""
        ctx = entry.context_length
        return MemoryPlan(weights=0, kv_cache=0, compute=0, ctx_size=ctx, ctx_max=ctx)

    def parallel_of(self, name: str) -> int:
        return self.model(name).parallel

    def health_path_of(self, name: str) -> str:
        return self.model(name).health_path

    def headers(self, name: str) -> dict[str, str]:
        key = self.model(name).api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def command(self, binary: Path, entry: ModelEntry, kind: SlotKind, port: int, plan: MemoryPlan, *,
                threads: int = 0, workarounds: tuple[str, ...] = ()) -> list[str]:
        raise EngineMissing("a remote engine is not started here")

    def environment(self, plan: MemoryPlan) -> dict[str, str]:
        return {}

    def workaround(self, returncode: int, tail: str, applied: tuple[str, ...]) -> str | None:
        return None

    def find_binary(self) -> Path | None:
        return None

    def install(self, hardware: HardwareSnapshot, report: Progress) -> Path:
        raise EngineMissing("a remote engine is installed where it runs, not here")


class RemoteRunner:
    """Watches one remote engine for one slot generation; posts the same reports an EngineRunner does."""

    def __init__(self, key: SlotKey, generation: int, url: str, health_path: str, headers: dict[str, str],
                 config: RunnerConfig, session: aiohttp.ClientSession, stop_event: asyncio.Event,
                 post: Callable[[object], None]) -> None:
        self.key, self.generation, self.url, self.headers = key, generation, url, headers
        self.health_url = url + health_path
        self.config, self.session, self.stop_event, self.post = config, session, stop_event, post

    async def run(self) -> None:
        try:
            await self._watch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in us: report it instead of leaving the slot loading or ready for ever
            log.exception("remote runner for %s failed", self.key)
            self.post(EngineFailed(self.key, self.generation, f"internal error: {exc}", Severity.ENGINE_BUG))

    async def _watch(self) -> None:
        self.post(EngineProgress(self.key, self.generation, "spawned", None, f"checking {self.url}"))
        if not await self._until_healthy():
            return
        self.post(EngineReady(self.key, self.generation))
        failures = 0
        while not await self._stopped_within(self.config.health_interval_s):
            failures = 0 if await self._healthy() else failures + 1
            if failures >= self.config.health_failures:
                self.post(EngineFailed(self.key, self.generation, "its remote engine stopped answering its health "
                                       f"checks ({failures} in a row)", Severity.TRANSIENT))
                return
        self.post(EngineStopped(self.key, self.generation))

    async def _until_healthy(self) -> bool:
        """Whether it answered within READY_S (or load_timeout_s, if shorter): an engine that already runs answers
        at once, and one that is down must not hold requests for a cold load's time. Posts the failure or the
        stop when not."""
        wait_s = min(READY_S, self.config.load_timeout_s)
        deadline = asyncio.get_running_loop().time() + wait_s
        while not await self._healthy():
            if asyncio.get_running_loop().time() >= deadline:
                why = f"its remote engine did not answer within {wait_s:g}s"
                self.post(EngineFailed(self.key, self.generation, why, Severity.TRANSIENT))
                return False
            if await self._stopped_within(min(1.0, self.config.health_interval_s)):
                self.post(EngineStopped(self.key, self.generation))
                return False
        return True

    async def _healthy(self) -> bool:
        return await answers_health(self.session, self.health_url, max(self.config.health_interval_s, 2.0),
                                    self.headers)

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True
