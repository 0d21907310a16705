"""Many models at once: budget, LRU eviction, drain, keep-alive, shared loads, parallel loads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from catalog.store import ModelStore
from manager.config import LlamaCppSettings, Paths, Settings
from manager.engines.llamacpp import LlamaCppAdapter
from manager.protocol import SlotKind
from tests.support.instance import Instance, wait_until
from tests.support.slow_engine import release, write_slow_engine

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
MiB = 1024**2


def chat_estimate(models_dir: Path, file: str = "chat.gguf") -> int:
    """What the manager will reserve for one tiny chat model under the test config, before it is measured."""
    settings = Settings(llama_cpp=LlamaCppSettings(cache_ram_mb=0))
    entry = ModelStore(Paths(models_dir / f"probe-home-{file}")).import_gguf(models_dir / file, "probe")
    return LlamaCppAdapter(settings, Paths(models_dir)).plan(entry, SlotKind.CHAT, None, 0).total


def config(budget_bytes: int = 0, **extra: object) -> str:
    lines = [f"memory_budget_mb = {max(1, budget_bytes // MiB)}" if budget_bytes else ""]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    return "\n".join(lines) + "\n[llama_cpp]\ncache_ram_mb = 0\n"


def chat(inst: Instance, model: str, **extra: object) -> tuple[int, dict]:
    return inst.post("/v1/chat/completions", {"model": model, **CHAT, **extra})  # type: ignore[return-value]


def ready_models(inst: Instance) -> set[str]:
    return {s["model"] for s in inst.status()["slots"] if s["state"] == "ready"}


@pytest.fixture
def two_fit(make_instance, models_dir: Path):  # type: ignore[no-untyped-def]
    """An instance that holds two tiny models but not three.

    A count limit, not a memory budget: charges follow what engines really hold
    once measured (a second after ready), so a budget sized from estimates would
    make these tests depend on when the measurement lands.
    """
    def make(**extra: object) -> Instance:
        models = {n: models_dir / "chat.gguf" for n in ("a", "b", "c")} | {n: models_dir / "cycle.gguf" for n in ("busy", "busy2")}
        # These are about memory, with endless streams in flight: each engine gets a thread of its own, so that
        # no request waits for another model's cores (that is tests/integration/test_cores.py's business).
        cores = {"cpu_policy": "shared", "cpu_cores": 3, "cpu_shared_engines": 3}
        return make_instance(config(max_loaded_models=2, **cores, **extra), models).start()
    return make


async def open_stream(http: aiohttp.ClientSession, inst: Instance, model: str) -> aiohttp.ClientResponse:
    body = {"model": model, "stream": True, "max_tokens": 100000, "messages": CHAT["messages"]}
    resp = await http.post(inst.url + "/v1/chat/completions", json=body)
    await resp.content.readuntil(b"hello")
    return resp


def test_of_three_models_where_two_fit_the_least_recently_used_goes(two_fit) -> None:  # type: ignore[no-untyped-def]
    inst = two_fit()
    assert chat(inst, "a")[0] == 200
    assert chat(inst, "b")[0] == 200
    b_pid = inst.slot("b")["pid"]
    assert chat(inst, "a")[0] == 200  # a is now the more recent
    assert chat(inst, "c")[0] == 200
    wait_until(lambda: ready_models(inst) == {"a", "c"} and inst.slot("b") is None, what="b evicted")
    assert not psutil.pid_exists(b_pid)
    budget = inst.status()["budget"]
    assert budget["used_bytes"] <= budget["total_bytes"]


async def test_a_model_with_a_stream_in_flight_is_not_evicted(two_fit) -> None:  # type: ignore[no-untyped-def]
    inst = two_fit()
    async with aiohttp.ClientSession() as http:
        stream = await open_stream(http, inst, "busy")  # loaded first: the LRU one
        busy_pid = inst.slot("busy")["pid"]
        assert chat(inst, "a")[0] == 200
        assert chat(inst, "b")[0] == 200  # a (idle) goes, not busy
        a = inst.slot("a")  # one reading: it may stop between two
        assert a is None or a["state"] == "stopping"
        assert inst.slot("busy")["pid"] == busy_pid
        for _ in range(20):  # the stream kept flowing throughout: more tokens still come
            await stream.content.readuntil(b"world")
        stream.close()


async def test_a_load_waits_for_busy_models_then_says_how_much_memory_was_missing(two_fit) -> None:  # type: ignore[no-untyped-def]
    inst = two_fit(drain_timeout_s=1.5)
    async with aiohttp.ClientSession() as http:
        streams = [await open_stream(http, inst, "busy"), await open_stream(http, inst, "busy2")]
        started = time.monotonic()
        code, body = await asyncio.to_thread(chat, inst, "c")
        waited = time.monotonic() - started
        assert {s["model"]: s["inflight"] for s in inst.status()["slots"]} == {"busy": 1, "busy2": 1}
        for stream in streams:
            stream.close()
    assert code == 503 and body["error"]["code"] == "no_capacity"
    message = body["error"]["message"]
    assert "drain_timeout_s" in message and "busy" in message
    assert "needs" in message and "MiB" in message and "is free" in message
    assert waited >= 1.4


async def test_a_load_waits_for_busy_models_memory_then_says_how_much_was_missing(make_instance,
                                                                                 models_dir: Path) -> None:
    # Room for one engine and no more, whether or not it was measured yet.
    budget = int(max(chat_estimate(models_dir), chat_estimate(models_dir, "cycle.gguf")) * 1.1)
    inst = make_instance(config(budget, drain_timeout_s=1.5),
                         {"busy": models_dir / "cycle.gguf", "c": models_dir / "chat.gguf"}).start()
    async with aiohttp.ClientSession() as http:
        stream = await open_stream(http, inst, "busy")
        code, body = await asyncio.to_thread(chat, inst, "c")
        assert inst.slot("busy")["inflight"] == 1
        stream.close()
    assert code == 503 and body["error"]["code"] == "no_capacity"
    message = body["error"]["message"]
    assert "drain_timeout_s" in message and "needs" in message and "is free" in message


def test_a_model_larger_than_the_budget_is_refused_with_the_sizes(make_instance, models_dir: Path) -> None:
    inst = make_instance(config(4 * MiB), {"m": models_dir / "chat.gguf"}).start()
    code, body = chat(inst, "m")
    assert code == 503 and body["error"]["code"] == "no_capacity"
    message = body["error"]["message"]
    assert "needs" in message and "4 MiB" in message


def test_max_loaded_models_evicts_even_when_memory_fits(make_instance, models_dir: Path) -> None:
    inst = make_instance(config(max_loaded_models=1), {"a": models_dir / "chat.gguf", "b": models_dir / "chat.gguf"})
    inst.start()
    assert chat(inst, "a")[0] == 200
    assert chat(inst, "b")[0] == 200
    wait_until(lambda: ready_models(inst) == {"b"} and inst.slot("a") is None, what="a evicted")


def test_pinned_models_are_evicted_last(two_fit) -> None:  # type: ignore[no-untyped-def]
    inst = two_fit()
    code, body = inst.post("/lf/model/switch", {"model": "a", "pin": True})
    assert code == 200 and body["slot"]["pinned"]
    assert chat(inst, "b")[0] == 200
    assert chat(inst, "c")[0] == 200  # a is the LRU, but pinned: b goes
    wait_until(lambda: ready_models(inst) == {"a", "c"}, what="b evicted, a kept")


def test_switch_is_idempotent_and_returns_when_ready(make_instance, models_dir: Path) -> None:
    inst = make_instance(config(), {"a": models_dir / "chat.gguf"}).start()
    code, first = inst.post("/lf/model/switch", {"model": "a"})
    assert code == 200 and first["slot"]["state"] == "ready"
    code, second = inst.post("/lf/model/switch", {"model": "a"})
    assert code == 200 and second["slot"]["pid"] == first["slot"]["pid"] and second["load_s"] == 0
    assert inst.post("/lf/model/switch", {"model": "zzz"})[0] == 404
    assert inst.post("/lf/model/switch", raw=b'{"model": 1}')[0] == 400


def test_keep_alive_zero_unloads_right_after_the_request(make_instance, models_dir: Path) -> None:
    inst = make_instance(config(), {"a": models_dir / "chat.gguf"}).start()
    assert chat(inst, "a", keep_alive=0)[0] == 200
    wait_until(lambda: inst.slot("a") is None, what="a unloaded after its request")


def test_negative_keep_alive_outlives_the_default_expiry(make_instance, models_dir: Path) -> None:
    inst = make_instance(config(keep_alive="1s"), {"a": models_dir / "chat.gguf", "b": models_dir / "chat.gguf"})
    inst.start()
    assert chat(inst, "a", keep_alive=-1)[0] == 200
    assert chat(inst, "b")[0] == 200
    assert inst.slot("b")["expires_in_s"] <= 1.0
    # No traffic from here on: expiry runs on its own timer.
    wait_until(lambda: inst.slot("b") is None, timeout=10, what="b expired after 1s idle")
    slot = inst.slot("a")
    assert slot["state"] == "ready" and slot["expires_in_s"] is None


def test_a_later_request_without_keep_alive_returns_to_the_default(make_instance, models_dir: Path) -> None:
    inst = make_instance(config(keep_alive="10m"), {"a": models_dir / "chat.gguf"}).start()
    assert chat(inst, "a", keep_alive="1h")[0] == 200
    assert inst.slot("a")["expires_in_s"] > 3000
    assert chat(inst, "a")[0] == 200
    assert 500 < inst.slot("a")["expires_in_s"] <= 600


async def test_ten_concurrent_requests_for_a_cold_model_share_one_load(make_instance, models_dir: Path) -> None:
    inst = make_instance(config(), {"a": models_dir / "chat.gguf"}).start()
    async with aiohttp.ClientSession() as http:
        async def one() -> int:
            async with http.post(inst.url + "/v1/chat/completions", json={"model": "a", **CHAT}) as r:
                return r.status
        statuses = await asyncio.gather(*(one() for _ in range(10)))
    assert statuses == [200] * 10
    log = (inst.home / "logs" / "engine-a-chat.log").read_text()
    assert log.count("\n==== ") + log.startswith("==== ") == 1  # one engine start
    assert inst.slot("a")["generation"] == 1


async def test_a_slow_load_does_not_delay_requests_to_a_loaded_model(make_instance, models_dir: Path,
                                                                     llama_server: str, tmp_path: Path) -> None:
    inst = make_instance(config(), {"fast": models_dir / "chat.gguf", "slow": models_dir / "chat.gguf"})
    gate = tmp_path / "loaded"
    inst.env["LMFORGE_LLAMA_SERVER"] = str(write_slow_engine(tmp_path, llama_server, gate=gate))
    inst.start()
    assert chat(inst, "fast")[0] == 200
    slow = asyncio.create_task(asyncio.to_thread(chat, inst, "slow"))
    await asyncio.to_thread(wait_until, lambda: (inst.slot("slow") or {}).get("state") == "loading",
                            what="slow to be loading")
    for _ in range(5):
        started = time.monotonic()
        assert (await asyncio.to_thread(chat, inst, "fast"))[0] == 200
        assert time.monotonic() - started < 2.0
    assert inst.slot("slow")["state"] == "loading"  # all five were served during the slow load
    await asyncio.to_thread(release, gate)
    assert (await slow)[0] == 200


async def test_two_cold_models_that_both_fit_load_in_parallel(make_instance, models_dir: Path,
                                                               llama_server: str, tmp_path: Path) -> None:
    inst = make_instance(config(), {"slow1": models_dir / "chat.gguf", "slow2": models_dir / "chat.gguf"})
    inst.env["LMFORGE_LLAMA_SERVER"] = str(write_slow_engine(tmp_path, llama_server, delay_s=3.0))
    inst.start()
    started = time.monotonic()
    both = asyncio.gather(asyncio.to_thread(chat, inst, "slow1"), asyncio.to_thread(chat, inst, "slow2"))
    await asyncio.to_thread(
        wait_until, lambda: {s["state"] for s in inst.status()["slots"]} == {"loading"}
        and len(inst.status()["slots"]) == 2, what="both loading at once")
    assert [code for code, _ in await both] == [200, 200]
    assert time.monotonic() - started < 5.5  # two 3 s loads side by side, not one after the other


def test_auto_load_models_are_loaded_and_pinned_at_start(make_instance, models_dir: Path) -> None:
    inst = make_instance(config(auto_load=["a"]), {"a": models_dir / "chat.gguf"}).start()
    slot = wait_until(lambda: (s := inst.slot("a")) and s["state"] == "ready" and s, what="a auto-loaded")
    assert slot["pinned"] and slot["expires_in_s"] is None


def test_a_models_own_keep_alive_applies_to_requests_without_one(make_instance, models_dir: Path) -> None:
    inst = make_instance(config(keep_alive="1h"), {"a": models_dir / "chat.gguf"}).start()
    assert inst.post("/lf/model/switch", {"model": "a", "keep_alive": "1s"})[0] == 200
    assert chat(inst, "a")[0] == 200
    assert inst.slot("a")["expires_in_s"] <= 1.0
    wait_until(lambda: inst.slot("a") is None, what="a expired on its own keep_alive")


async def test_unloading_a_busy_model_waits_for_its_request_then_stops_it(make_instance, models_dir: Path) -> None:
    inst = make_instance(config(), {"busy": models_dir / "cycle.gguf"}).start()
    async with aiohttp.ClientSession() as http:
        body = {"model": "busy", "stream": True, "max_tokens": 100000, "keep_alive": "1h",
                "messages": CHAT["messages"]}
        async with http.post(inst.url + "/v1/chat/completions", json=body) as stream:
            await stream.content.readuntil(b"hello")
            code, reply = await asyncio.to_thread(inst.post, "/lf/model/unload", {"model": "busy"})
            assert code == 200 and reply["unloaded"] == ["busy"]
            await stream.content.readuntil(b"world")  # the request in flight is not cut off
            assert inst.slot("busy")["state"] == "ready"
    # Its own keep_alive of 1h does not outlast an explicit unload.
    await asyncio.to_thread(wait_until, lambda: inst.slot("busy") is None, what="busy unloaded once idle")


async def test_two_busy_models_that_fit_one_at_a_time_take_turns(make_instance, models_dir: Path) -> None:
    """Two clients, one per model, each sending its next request as the last ends: neither starves,
    and they take turns rather than swapping on every request."""
    inst = make_instance(config(max_loaded_models=1, fair_share_s=1.0, drain_timeout_s=30.0),
                         {"a": models_dir / "cycle.gguf", "b": models_dir / "cycle.gguf"}).start()
    done = {"a": 0, "b": 0}
    failures: list[tuple[str, int]] = []
    until = time.monotonic() + 8.0

    async def client(http: aiohttp.ClientSession, model: str) -> None:
        body = {"model": model, "max_tokens": 64, "messages": CHAT["messages"]}
        while time.monotonic() < until:
            async with http.post(inst.url + "/v1/chat/completions", json=body) as resp:
                await resp.read()
                if resp.status == 200:
                    done[model] += 1
                else:
                    failures.append((model, resp.status))

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http, m) for m in ("a", "b")))
    generations = [s["generation"] for s in inst.status()["slots"]]
    swaps = max(generations) - 1
    assert not failures
    assert done["a"] >= 10 and done["b"] >= 10  # both served: neither starves
    assert 2 <= swaps <= (done["a"] + done["b"]) // 5, (swaps, done)
    print(swaps, done)  # they took turns, not one swap per request
