"""The control-plane client against a real manager: a lease nobody waits for any more is handed back."""

from __future__ import annotations

import pytest
from pathlib import Path

from manager.client import ManagerClient, ManagerTimeout, ManagerUnavailable, QueueSpot
from manager.config import Paths
from manager.protocol import AcquireRequest, PeerRole
from tests.support.instance import wait_until_async
from tests.support.slow_engine import write_slow_engine


async def test_an_acquire_that_times_out_while_the_load_finishes_returns_its_lease(
        make_instance, models_dir: Path, llama_server: str, tmp_path: Path) -> None:
    inst = make_instance("", {"slow": models_dir / "chat.gguf"})
    inst.env["LMFORGE_LLAMA_SERVER"] = str(write_slow_engine(tmp_path, llama_server, delay_s=1.5))
    inst.start()
    client = ManagerClient(Paths(inst.home), PeerRole.TOOL)
    await client.start()
    try:
        with pytest.raises(ManagerUnavailable):
            await client.request(AcquireRequest, model="slow", timeout=0.5)

        async def returned() -> bool:
            slot = inst.slot("slow")
            return bool(slot and slot["state"] == "ready" and slot["inflight"] == 0)
        await wait_until_async(returned, timeout=20, what="the late lease to be returned")
        async with client.lease(model="slow", timeout=10) as held:  # and the next one is served at once
            assert inst.slot("slow")["inflight"] == 1 and held.reply.lease_id.startswith(inst.status()["epoch"])
        await wait_until_async(returned, what="the lease to be returned on leaving the block")
    finally:
        await client.close()


async def test_an_acquire_that_stops_waiting_in_the_queue_gives_its_place_back(make_instance, models_dir: Path) -> None:
    inst = make_instance("[llama_cpp]\nparallel = 1\n", {"m": models_dir / "chat.gguf"}).start()
    client = ManagerClient(Paths(inst.home), PeerRole.TOOL)
    await client.start()
    spots: list[QueueSpot] = []
    try:
        async with client.lease(model="m", timeout=30):  # the engine's one slot
            with pytest.raises(ManagerTimeout):  # the gateway tells its client the model was not free in time
                await client.request(AcquireRequest, model="m", timeout=3.0, queued=spots.append)
            assert spots == [QueueSpot(ahead=0, loading=False)]  # it was told where it stood

            async def gone() -> bool:
                return inst.slot("m")["waiting"] == 0
            await wait_until_async(gone, what="the abandoned acquire to leave the queue")
            assert inst.slot("m")["inflight"] == 1  # not granted: it left while the permit was still held
    finally:
        await client.close()
