"""A load told as it goes (the status stream's `load` events, the slot's load_stage, `lmforge load`), and a
load that stops progressing stopped after its stall window instead of waited out."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import aiohttp

from manager.load_watch import STAGES
from tests.support.instance import llama_servers_of, wait_until
from tests.support.sse import read_events
from tests.support.stalling_engine import write_stalling_engine

ORDER = ["waiting", *STAGES, "ready"]  # waiting: for the prober's first snapshot, on a fresh instance
# The window a stalled load gets here; the outer bound is far beyond anything this test waits for.
STALL = "load_stall_s = 2\nload_stall_s_per_gb = 0\nload_timeout_s = 3600\n"


async def test_the_status_stream_tells_a_loads_stages_in_order_and_ready_last(make_instance, models_dir: Path) -> None:
    inst = make_instance(models={"a": models_dir / "chat.gguf"}).start()
    stages: list[str] = []
    async with aiohttp.ClientSession() as http:
        async with http.get(inst.url + "/lf/status/stream") as resp:
            events = read_events(resp)
            name, _ = await events.__anext__()
            assert name == "snapshot"  # subscribed: nothing the switch causes can be missed from here on
            switch = asyncio.ensure_future(asyncio.to_thread(inst.post, "/lf/model/switch", {"model": "a"}))
            async for name, data in events:
                if name == "load" and data["model"] == "a":
                    stages.append(data["stage"])
                    assert data["progress"] is None or 0 <= data["progress"] <= 1
                    if data["stage"] in ("ready", "failed"):
                        break
            assert (await switch)[0] == 200
    assert "spawned" in stages and "loading_weights" in stages and stages[-1] == "ready"
    assert [ORDER.index(stage) for stage in stages] == sorted(ORDER.index(stage) for stage in stages)


def test_a_load_that_stops_progressing_is_stopped_after_its_stall_window(
        make_instance, models_dir: Path, tmp_path: Path, llama_server: str) -> None:
    # The fake engine stands in for a model on a dead NFS mount: it starts reading weights, then its reads
    # block for good (no output, no memory, no CPU), and /health never answers.
    inst = make_instance(STALL, models={"stall": models_dir / "chat.gguf"})
    inst.env["LMFORGE_LLAMA_SERVER"] = str(write_stalling_engine(tmp_path, llama_server))
    inst.start()
    started = time.monotonic()
    code, body = inst.post("/lf/model/switch", {"model": "stall"})
    waited = time.monotonic() - started
    assert code == 503 and body["error"]["code"] == "load_failed"
    message = body["error"]["message"]
    assert "made no progress for 2 s while loading_weights" in message and "it was stopped" in message
    assert "lmforge logs engine-stall-chat" in message
    assert 2 <= waited < 30  # about the window (2 s after its last sign of life), nowhere near load_timeout_s
    assert "made no progress" in inst.status()["last_errors"]["stall"]["message"]
    wait_until(lambda: not llama_servers_of(inst.home), what="the stalled engine to be killed")


def test_a_slow_load_that_keeps_progressing_is_not_stopped_and_shows_its_stage(
        make_instance, models_dir: Path, tmp_path: Path, llama_server: str) -> None:
    # The fake engine stands in for a large model whose load works for long (llama.cpp repacking weights for
    # the CPU): for 4 s (twice the stall window) it computes and logs as it goes, then the real engine loads it.
    inst = make_instance(STALL, models={"crawl": models_dir / "chat.gguf"})
    inst.env["LMFORGE_LLAMA_SERVER"] = str(write_stalling_engine(tmp_path, llama_server, crawl_s=4.0))
    inst.start()
    answer: list[tuple[int, object]] = []
    switch = threading.Thread(target=lambda: answer.append(inst.post("/lf/model/switch", {"model": "crawl"})))
    started = time.monotonic()
    switch.start()
    try:
        slot = wait_until(lambda: (s := inst.slot("crawl")) and s["load_stage"] == "loading_weights" and s,
                          what="a snapshot taken mid-load to show its stage")
        assert slot["state"] == "loading" and 0 <= slot["load_progress"] < 1
    finally:
        switch.join(60)
    code, body = answer[0]
    assert code == 200 and body["slot"]["state"] == "ready", body
    assert time.monotonic() - started >= 4  # longer than the stall window, and still loaded
    assert inst.slot("crawl")["load_stage"] == "" and "crawl" not in inst.status()["last_errors"]


def test_lmforge_load_prints_the_stages_as_lines_when_not_on_a_terminal(make_instance, models_dir: Path) -> None:
    inst = make_instance(models={"a": models_dir / "chat.gguf"}).start()
    loaded = inst.lmforge("load", "a")
    assert loaded.returncode == 0, loaded.stderr
    lines = loaded.stdout.splitlines()
    started = lines.index(next(line for line in lines if line.startswith("a: engine started (pid ")))
    weights = lines.index(next(line for line in lines if line.startswith("a: loading weights")))
    assert started < weights < len(lines) - 1 and lines[-1].startswith("a is ready (pid ")
    assert inst.post("/lf/model/unload", {"model": "a"})[0] == 200
    wait_until(lambda: inst.slot("a") is None, what="a to unload")
    quiet = inst.lmforge("-q", "load", "a")
    assert quiet.returncode == 0 and quiet.stdout == "" and inst.slot("a")["state"] == "ready"

