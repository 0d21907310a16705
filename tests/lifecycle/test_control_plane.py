"""The control plane's hard cases with real processes: stalls, dead engines, a crashed manager, hostile bytes."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
from pathlib import Path

import aiohttp
import psutil
import pytest
import zmq

from manager.config import Paths
from manager.ipc import endpoints
from tests.support.instance import Instance, wait_until
from tests.support.slow_engine import write_slow_engine
from tests.support.sigill_engine import write_sigill_engine

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def chat(inst: Instance, model: str, **extra: object) -> tuple[int, dict]:
    return inst.post("/v1/chat/completions", {"model": model, **CHAT, **extra})  # type: ignore[return-value]


def slots_of(inst: Instance, model: str) -> list[dict]:
    return [s for s in inst.status()["slots"] if s["model"] == model]


async def test_a_manager_stall_leaks_no_lease(make_instance, models_dir: Path, llama_server: str,
                                              tmp_path: Path) -> None:
    """Seen: a cold chat during a 5 s SIGSTOP of the manager left `inflight: 1` for good."""
    inst = make_instance("", {"slow": models_dir / "chat.gguf"})
    inst.env["LMFORGE_LLAMA_SERVER"] = str(write_slow_engine(tmp_path, llama_server, delay_s=2.0))
    inst.start()
    manager = inst.procs["manager"]
    request = asyncio.create_task(asyncio.to_thread(chat, inst, "slow"))
    await asyncio.to_thread(wait_until, lambda: (inst.slot("slow") or {}).get("state") == "loading",
                            what="the cold model to be loading")
    manager.send_signal(signal.SIGSTOP)
    try:
        code, body = await asyncio.wait_for(request, 30)
        assert code == 503 and "manager" in body["error"]["message"]  # the gateway gave up on it
    finally:
        manager.send_signal(signal.SIGCONT)
    # The late grant is handed back: nothing stays in flight, and unload really unloads.
    await asyncio.to_thread(wait_until, lambda: (s := inst.slot_if_answering("slow")) and s["state"] == "ready"
                            and s["inflight"] == 0, timeout=20, what="the lease to come back")
    code, _ = await asyncio.to_thread(inst.post, "/lf/model/unload", {"model": "slow"})
    assert code == 200
    await asyncio.to_thread(wait_until, lambda: inst.slot("slow") is None, what="slow to unload")


@pytest.mark.parametrize("attempt", range(6))
def test_a_request_right_after_an_engine_dies_gets_a_normal_answer(make_instance, models_dir: Path,
                                                                   attempt: int) -> None:
    """Seen: kill an engine, send the next request at once: 4 of 6 tries got 502 "Cannot connect"."""
    inst = make_instance("", {"chat": models_dir / "cycle.gguf"}).start()
    assert chat(inst, "chat")[0] == 200
    old = inst.slot("chat")["pid"]
    os.kill(old, signal.SIGKILL)
    code, body = chat(inst, "chat")
    assert code == 200, body
    assert body["choices"][0]["message"]["content"]
    assert inst.slot("chat")["pid"] != old


async def test_streams_survive_a_manager_crash_and_the_next_manager_adopts_the_engine(
        make_instance, models_dir: Path) -> None:
    """Seen: a manager crash took every stream with it (the engines died with their parent)."""
    inst = make_instance("", {"cycle": models_dir / "cycle.gguf"}).start()
    body = {"model": "cycle", "stream": True, "max_tokens": 100000, "messages": CHAT["messages"]}
    async with aiohttp.ClientSession() as http:
        async with http.post(inst.url + "/v1/chat/completions", json=body) as resp:
            await resp.content.readuntil(b"hello")
            pid = inst.slot("cycle")["pid"]
            inst.procs["manager"].send_signal(signal.SIGKILL)
            inst.procs["manager"].wait()
            for _ in range(3):  # tokens keep coming with no manager at all
                await asyncio.wait_for(resp.content.readuntil(b"world"), 10)
            inst.start("manager", wait=False)
            slot = await asyncio.to_thread(wait_until, lambda: inst.slot_if_answering("cycle"), timeout=20,
                                           what="the new manager to answer")
            assert slot["pid"] == pid and slot["adopted"] and slot["state"] == "ready"
            await asyncio.to_thread(wait_until, lambda: (inst.slot_if_answering("cycle") or {}).get("inflight") == 1,
                                    what="the gateway's declared lease to be taken over")
            await asyncio.wait_for(resp.content.readuntil(b"hello"), 10)
    await asyncio.to_thread(wait_until, lambda: inst.slot("cycle")["inflight"] == 0,
                            what="the lease to return when the stream ends")
    code, reply = await asyncio.to_thread(chat, inst, "cycle")
    assert code == 200 and inst.slot("cycle")["pid"] == pid  # the adopted engine serves new requests


def test_an_adopted_engine_that_dies_is_noticed_and_reloaded(make_instance, models_dir: Path) -> None:
    inst = make_instance("", {"chat": models_dir / "chat.gguf"}).start()
    assert chat(inst, "chat")[0] == 200
    pid = inst.slot("chat")["pid"]
    inst.stop("manager", sig=signal.SIGKILL)
    inst.start("manager", wait=False)
    wait_until(lambda: (inst.slot_if_answering("chat") or {}).get("adopted"), timeout=20,
               what="the engine to be adopted")
    os.kill(pid, signal.SIGKILL)
    # On a loaded machine the gateway may briefly miss the new manager's beats: tolerate that while waiting.
    def noticed() -> bool:
        code, body = inst.get("/lf/status")
        return code == 200 and not any(s["model"] == "chat" for s in body["slots"])

    wait_until(noticed, timeout=20, what="the adopted engine's exit to be noticed")
    code, body = chat(inst, "chat")
    assert code == 200, body
    assert inst.slot("chat")["pid"] != pid


def test_an_engine_recorded_for_a_model_no_longer_installed_is_killed_not_adopted(
        make_instance, models_dir: Path) -> None:
    inst = make_instance("", {"chat": models_dir / "chat.gguf"}).start()
    assert chat(inst, "chat")[0] == 200
    pid = inst.slot("chat")["pid"]
    inst.stop("manager", sig=signal.SIGKILL)
    index = inst.home / "models.json"
    data = json.loads(index.read_text())
    data["models"] = {} if isinstance(data.get("models"), dict) else []
    index.write_text(json.dumps(data))
    inst.start("manager", wait=False)
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
               timeout=20, what="the unadoptable engine to be killed")


@pytest.mark.parametrize("frames", [
    [b"", b"anything"],  # seen: a two-frame message killed the reader
    [b"\xc1garbage"],
    [pickle.dumps({"req_id": 1, "model": "x"})],
    [os.urandom(4 * 1024 * 1024)],
    [b"a", b"b", b"c", b"d"],
], ids=["empty-then-bytes", "garbage", "pickle", "4MiB-random", "four-frames"])
def test_a_message_of_any_shape_is_refused_and_the_manager_keeps_answering(
        make_instance, models_dir: Path, frames: list[bytes]) -> None:
    inst = make_instance("", {"chat": models_dir / "chat.gguf"}).start()
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(endpoints(Paths(inst.home)).control)
        sock.send_multipart(frames)
        wait_until(lambda: "refused" in inst.log("manager"), what="the manager to log the refusal")
        code, _ = inst.post("/lf/model/switch", {"model": "chat"}, timeout=30)
        assert code == 200
        assert inst.healthy()
    finally:
        ctx.destroy(linger=0)


def test_health_is_503_while_the_manager_is_stopped_and_200_again_after(make_instance, models_dir: Path) -> None:
    inst = make_instance("", {"chat": models_dir / "chat.gguf"}).start()
    inst.procs["manager"].send_signal(signal.SIGSTOP)
    try:
        assert inst.get("/health", timeout=10)[0] == 503  # heartbeats would still be fresh: it asked
    finally:
        inst.procs["manager"].send_signal(signal.SIGCONT)
    wait_until(inst.healthy, what="health back once the manager answers")


def test_a_sigill_while_loading_is_retried_once_without_repacking(make_instance, models_dir: Path,
                                                                   llama_server: str, tmp_path: Path) -> None:
    inst = make_instance("", {"chat": models_dir / "chat.gguf"})
    inst.env["LMFORGE_LLAMA_SERVER"] = str(write_sigill_engine(tmp_path, llama_server))
    inst.start()
    assert chat(inst, "chat")[0] == 200
    assert "--no-repack" in " ".join(psutil.Process(inst.slot("chat")["pid"]).cmdline())
    assert "SIGILL" in inst.log("manager")


async def test_the_status_stream_resyncs_after_a_manager_restart(make_instance, models_dir: Path) -> None:
    inst = make_instance("", {"chat": models_dir / "chat.gguf"}).start()
    old_epoch = inst.status()["epoch"]
    async with aiohttp.ClientSession() as http:
        async with http.get(inst.url + "/lf/status/stream") as resp:
            assert (await resp.content.readuntil(b"\n\n")).startswith(b"event: snapshot")
            inst.stop("manager", sig=signal.SIGKILL)
            inst.start("manager", wait=False)

            async def next_snapshot() -> dict:
                while True:
                    frame = (await resp.content.readuntil(b"\n\n")).decode()
                    if frame.startswith("event: snapshot"):
                        return json.loads(frame.split("data: ", 1)[1])
            snap = await asyncio.wait_for(next_snapshot(), 30)
            assert snap["epoch"] != old_epoch
