"""A health probe that times out while the engine still computes is not a hang; one that times out
while it computes nothing is."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from manager.protocol import SlotKind
from manager.runner import EngineFailed, EngineReady, EngineRunner, Launch, RunnerConfig
from tests.support import busy_engine
from tests.support.instance import wait_until_async


def probes(directory: Path) -> int:
    path = directory / "probes"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_a_busy_engine_slow_to_answer_health_is_kept_and_a_hung_one_is_killed(tmp_path: Path) -> None:
    reports: list[object] = []

    async def command(port: int, workarounds: tuple[str, ...]) -> Launch:
        return Launch([sys.executable, busy_engine.__file__, str(tmp_path), "--port", str(port)], {})

    config = RunnerConfig(load_timeout_s=30, stop_grace_s=1, health_interval_s=0.2, health_failures=2,
                          health_path="/health", log_path=tmp_path / "engine.log", pid_dir=tmp_path / "pids")
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        runner = EngineRunner(("busy", SlotKind.CHAT), 1, command, config, session, stop, reports.append)
        task = asyncio.create_task(runner.run())
        try:
            await wait_until_async(lambda: _any(reports, EngineReady), what="the engine to be ready")
            (tmp_path / "busy").touch()
            start = probes(tmp_path)
            # Several probes go unanswered while it computes: more than health_failures in a row.
            async def four_unanswered() -> bool:
                return probes(tmp_path) >= start + 4
            await wait_until_async(four_unanswered, timeout=30, what="four unanswered probes")
            assert not any(isinstance(r, EngineFailed) for r in reports)
            (tmp_path / "busy").unlink()  # it stops computing and still does not answer: a hang
            await wait_until_async(lambda: _any(reports, EngineFailed), timeout=30, what="the hang to be noticed")
            failed = next(r for r in reports if isinstance(r, EngineFailed))
            assert "health probe" in failed.message
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def _any(reports: list[object], kind: type) -> bool:
    return any(isinstance(r, kind) for r in reports)
