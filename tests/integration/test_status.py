"""/lf/status and its live SSE stream: what a dashboard or `lmforge ps` sees."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.support.instance import Instance, wait_until
from tests.support.sse import read_events

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.fixture
def inst(make_instance, models_dir: Path) -> Instance:
    return make_instance(models={"a": models_dir / "chat.gguf", "e": models_dir / "embed.gguf"}).start()




async def test_the_stream_starts_with_a_snapshot_then_reports_each_transition_in_order(inst: Instance) -> None:
    transitions: list[tuple[str | None, str]] = []
    seqs: list[int] = []
    async with aiohttp.ClientSession() as http:
        async with http.get(inst.url + "/lf/status/stream") as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = read_events(resp)
            name, first = await events.__anext__()
            assert name == "snapshot" and first["slots"] == [] and "budget" in first
            seqs.append(first["seq"])
            assert (await asyncio.to_thread(inst.post, "/lf/model/switch", {"model": "a"}))[0] == 200
            assert (await asyncio.to_thread(inst.post, "/lf/model/unload", {"model": "a"}))[0] == 200
            async for name, data in events:
                seqs.append(data["seq"])
                if name == "slot" and data["slot"]["model"] == "a" and data["previous"] is not None:
                    transitions.append((data["previous"], data["slot"]["state"]))
                if name == "slot" and data["slot"]["state"] == "unloaded":
                    break
    assert transitions == [("pending", "loading"), ("loading", "ready"), ("ready", "stopping"),
                           ("stopping", "unloaded")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_load_failures_appear_as_typed_error_events(inst: Instance, models_dir: Path) -> None:
    from catalog.store import ModelStore
    from manager.config import Paths

    ModelStore(Paths(inst.home)).import_gguf(models_dir / "broken.gguf", "broken")
    async with aiohttp.ClientSession() as http:
        async with http.get(inst.url + "/lf/status/stream") as resp:
            events = read_events(resp)
            await events.__anext__()
            assert (await asyncio.to_thread(inst.post, "/v1/chat/completions", {"model": "broken", **CHAT}))[0] == 503
            async for name, data in events:
                if name == "error":
                    assert data["model"] == "broken" and data["error"]["severity"] == "user_error"
                    break


def test_status_shows_estimate_measured_and_charged_memory_side_by_side(inst: Instance) -> None:
    assert inst.post("/v1/chat/completions", {"model": "a", **CHAT})[0] == 200
    slot = wait_until(lambda: (s := inst.slot("a")) and s["measured_bytes"] and s, what="a measured size")
    assert slot["estimate_bytes"] > 0 and slot["measured_bytes"] > 0
    assert slot["charged_bytes"] >= slot["measured_bytes"]  # what it holds, plus what its KV cache may still add
    assert slot["state"] == "ready" and slot["inflight"] == 0 and slot["idle_s"] >= 0
    assert slot["port"] and slot["pid"] and 0 < slot["expires_in_s"] <= 300
    status = inst.status()
    assert status["budget"]["used_bytes"] >= slot["charged_bytes"]
    assert status["budget"]["free_bytes"] == status["budget"]["total_bytes"] - status["budget"]["used_bytes"]
    assert status["hardware"]["ram_total"] > 0
    # Each program says hello in its own time: the gateway answering says nothing of the downloader.
    wait_until(lambda: {p["role"] for p in inst.status()["peers"]} == {"gateway", "prober", "downloader"},
               what="every program to have said hello")


def test_unload_with_an_empty_body_unloads_everything(inst: Instance) -> None:
    assert inst.post("/v1/chat/completions", {"model": "a", **CHAT})[0] == 200
    assert inst.post("/v1/embeddings", {"model": "e", "input": "x"})[0] == 200
    code, body = inst.post("/lf/model/unload")
    assert code == 200 and sorted(body["unloaded"]) == ["a", "e (embed)"]
    wait_until(lambda: inst.status()["slots"] == [], what="every slot gone")
    code, body = inst.post("/lf/model/unload", {"model": "missing"})
    assert code == 404


def test_the_cli_shows_what_is_loaded(inst: Instance) -> None:
    assert inst.post("/v1/chat/completions", {"model": "a", **CHAT})[0] == 200
    ps = inst.lmforge("ps")
    assert ps.returncode == 0 and "a" in ps.stdout and "ready" in ps.stdout
    assert all(column in ps.stdout for column in ("ESTIMATE", "MEASURED", "CHARGED"))
    listing = json.loads(inst.lmforge("list", "--json").stdout)
    assert {m["name"] for m in listing} == {"a", "e"}
    loaded = json.loads(inst.lmforge("ps", "--json").stdout)
    assert [s["model"] for s in loaded] == ["a"]
    unloaded = inst.lmforge("unload", "a")
    assert unloaded.returncode == 0 and "unloading a" in unloaded.stdout
    assert inst.lmforge("unload").returncode == 1  # neither a model nor --all
    loaded = inst.lmforge("load", "e", "--kind", "embed", "--pin")
    assert loaded.returncode == 0 and "ready" in loaded.stdout
    assert inst.slot("e", "embed")["pinned"]


def test_what_a_load_came_to_is_the_next_loads_estimate(inst: Instance) -> None:
    assert inst.post("/v1/chat/completions", {"model": "a", "max_tokens": 2,
                                              "messages": [{"role": "user", "content": "hi"}]})[0] == 200
    first = wait_until(lambda: (s := inst.slot("a")) and s["measured_bytes"] and s, what="a measurement")
    header = first["estimate_bytes"]
    assert inst.post("/lf/model/unload", {"model": "a"})[0] == 200
    wait_until(lambda: inst.slot("a") is None, what="a to unload")
    wait_until(lambda: (inst.home / "engines" / "memory.json").exists(), what="the ledger to be written")
    code, body = inst.post("/lf/model/switch", {"model": "a"})
    assert code == 200
    learned = body["slot"]["estimate_bytes"]
    assert learned != header and learned >= first["measured_bytes"]
