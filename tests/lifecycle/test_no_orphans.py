"""However the manager or gateway stops, no engine is left that no manager owns, and no lease stays stuck."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.support.instance import Instance, free_port, wait_until

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.fixture
def inst(make_instance, models_dir: Path) -> Instance:
    models = {"chat": models_dir / "chat.gguf", "embed": models_dir / "embed.gguf", "cycle": models_dir / "cycle.gguf"}
    return make_instance(models=models).start()


def load_two(inst: Instance) -> list[int]:
    assert inst.post("/v1/chat/completions", {"model": "chat", **CHAT})[0] == 200
    assert inst.post("/v1/embeddings", {"model": "embed", "input": "x"})[0] == 200
    pids = inst.engine_pids()
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    return pids


def test_sigterm_stops_the_engines_and_the_manager_exits_cleanly(inst: Instance) -> None:
    pids = load_two(inst)
    started = time.monotonic()
    inst.stop("manager")
    assert inst.procs["manager"].returncode == 0
    assert time.monotonic() - started < 30  # inside supervisord's stopwaitsecs for the manager
    assert not any(psutil.pid_exists(p) for p in pids)
    assert "[shutdown] manager: done" in inst.log("manager")


def test_a_restarted_manager_kills_recorded_engines_it_cannot_adopt(inst: Instance, llama_server: str,
                                                                     models_dir: Path) -> None:
    """A record without what adoption needs (an older manager's) names an engine nobody owns."""
    inst.stop("manager")
    stray = subprocess.Popen(
        [llama_server, "--model", str(models_dir / "chat.gguf"), "--host", "127.0.0.1", "--port", str(free_port())],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    pid_dir = inst.home / "engines" / "pids"
    pid_dir.mkdir(parents=True, exist_ok=True)
    record = {"pid": stray.pid, "argv0": llama_server, "started": psutil.Process(stray.pid).create_time()}
    (pid_dir / f"{stray.pid}.json").write_text(json.dumps(record))
    inst.start("manager", wait=False)
    stray.wait(timeout=15)
    assert stray.returncode == -signal.SIGKILL
    assert not list(pid_dir.glob("*.json"))


def test_a_recycled_pid_in_a_stale_record_is_left_alone(inst: Instance) -> None:
    inst.stop("manager")
    bystander = subprocess.Popen(["sleep", "60"])
    pid_dir = inst.home / "engines" / "pids"
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / f"{bystander.pid}.json").write_text(json.dumps({"pid": bystander.pid, "argv0": "x", "started": 1.0}))
    inst.start("manager", wait=False)
    wait_until(lambda: not list(pid_dir.glob("*.json")), what="the stale record to be dropped")
    assert bystander.poll() is None
    bystander.kill()
    bystander.wait()


async def test_a_dead_gateways_leases_are_returned_when_it_comes_back(inst: Instance) -> None:
    body = {"model": "cycle", "stream": True, "max_tokens": 100000, "messages": CHAT["messages"]}
    async with aiohttp.ClientSession() as http:
        async with http.post(inst.url + "/v1/chat/completions", json=body) as resp:
            await resp.content.readuntil(b"hello")
            assert inst.slot("cycle")["inflight"] == 1
            inst.procs["gateway"].send_signal(signal.SIGKILL)
            inst.procs["gateway"].wait()
    inst.start("gateway")
    wait_until(lambda: inst.slot("cycle")["inflight"] == 0, what="the old gateway's lease to be dropped")
