"""The manager process around its table: a dead background task takes it down; the loop shows its lag."""

from __future__ import annotations

import asyncio
from pathlib import Path

from manager.config import Paths, Settings
from manager.lag import LoopLag
from manager.service import ManagerService, Shutdown


async def test_a_background_task_that_dies_shuts_the_manager_down_as_a_crash(tmp_path: Path) -> None:
    service = ManagerService(Settings(), Paths(tmp_path / "home"))

    async def reader() -> None:
        raise ValueError("a bug in the reader")

    task = asyncio.get_running_loop().create_task(reader())
    await asyncio.gather(task, return_exceptions=True)
    service._background_died(task)
    item = service.inbox.get_nowait()
    service.close()
    assert isinstance(item, Shutdown) and item.crashed  # engines are left for the next manager


async def test_a_cancelled_background_task_is_not_a_crash(tmp_path: Path) -> None:
    service = ManagerService(Settings(), Paths(tmp_path / "home"))
    task = asyncio.get_running_loop().create_task(asyncio.sleep(10))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    service._background_died(task)
    service.close()
    assert service.inbox.empty()


def test_loop_lag_is_the_worst_over_the_window() -> None:
    lag = LoopLag(window_s=60)
    lag.record(100.0, 0.002)
    lag.record(101.0, 0.150)
    lag.record(102.0, 0.010)
    assert lag.worst_ms(now=102.0) == 150.0
    assert lag.worst_ms(now=161.5) == 10.0  # the 150 ms spike left the window
    assert lag.worst_ms(now=300.0) == 0.0
