"""Cores as a budget on a CPU host (manager/cores.py): thread counts, admission, fairness, the plan, policy changes.

Real LMForge, real llama-servers. Every model is the cycle model: it streams
" hello world ..." and never samples an end, so a request's length is its
max_tokens and a stream lasts until the test closes it, whatever the weights.
The thread count an engine runs is read from its own command line. Every test
names its cpu_policy: tests/support/instance.py makes other tests exclusive.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.support.instance import Instance, clean_up, llama_servers_of, prepare_instance, wait_until

HELLO = [{"role": "user", "content": "hello"}]
# Small engines: eight resident at once fit any test machine, and no cache to charge.
SMALL = "[llama_cpp]\nctx_size = 1024\ncache_ram_mb = 0\n"
WAIT_S = 60  # the lead may run the full suite meanwhile: loads and restarts are slow on a busy 2-core host


def config(**settings: object) -> str:
    lines = [f"{key} = {value!r}".replace("'", '"') for key, value in settings.items()]
    return "\n".join(lines) + "\n" + SMALL


def cycles(models_dir: Path, *names: str) -> dict[str, Path]:
    return {name: models_dir / "cycle.gguf" for name in names}


def threads_of(pid: int) -> int:
    """The engine's --threads, which must equal its --threads-batch (prompt batches are compute too)."""
    argv = psutil.Process(pid).cmdline()
    assert "--threads" in argv and "--threads-batch" in argv, f"an engine started without a thread count: {argv}"
    threads, batch = argv[argv.index("--threads") + 1], argv[argv.index("--threads-batch") + 1]
    assert threads == batch, argv
    return int(threads)


def threads_now(pid: int) -> int | None:
    """threads_of for a wait: None once the engine is gone (restarted meanwhile)."""
    try:
        return threads_of(pid)
    except psutil.NoSuchProcess:
        return None


def cpu_of(inst: Instance) -> dict:
    """/lf/status `cpu`, once the manager has it (None until the prober's first snapshot)."""
    return wait_until(lambda: inst.status()["cpu"], timeout=WAIT_S, what="/lf/status cpu")


def load(inst: Instance, model: str) -> int:
    code, body = inst.post("/lf/model/switch", {"model": model}, timeout=WAIT_S)
    assert code == 200, body
    return body["slot"]["pid"]  # type: ignore[index]


def engines(inst: Instance) -> dict[str, int]:
    """Ready engines by model: their pids."""
    return {s["model"]: s["pid"] for s in inst.status()["slots"] if s["state"] == "ready" and s["pid"]}


def all_run_with(inst: Instance, models: tuple[str, ...], threads: int) -> dict[str, int] | None:
    """The pids once every model's ready engine runs `threads` threads (a changed count restarts an idle engine)."""
    ready = engines(inst)
    if set(models) <= set(ready) and all(threads_now(ready[m]) == threads for m in models):
        return ready
    return None


@pytest.fixture
def instance(home: Path, llama_server: str):  # type: ignore[no-untyped-def]
    """Build a not yet started Instance; whatever it started is stopped afterwards."""
    made: list[Instance] = []

    def make(models: dict[str, Path], config_text: str) -> Instance:
        made.append(prepare_instance(home, llama_server, models, config_text))
        return made[-1]

    yield make
    for inst in made:
        clean_up(inst)


def test_exclusive_engines_start_with_every_core(instance, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """`exclusive`: each engine gets all the cores, and one computes at a time."""
    inst = instance(cycles(models_dir, "a", "b"), config(cpu_policy="exclusive")).start()
    pids = {model: load(inst, model) for model in ("a", "b")}
    cpu = cpu_of(inst)
    assert cpu["policy"] == "exclusive" and cpu["mode"] == "exclusive" and cpu["at_once"] == 1
    assert {model: threads_of(pid) for model, pid in pids.items()} == {"a": cpu["cores"], "b": cpu["cores"]}
    assert {s["model"]: s["threads"] for s in inst.status()["slots"]} == {"a": cpu["cores"], "b": cpu["cores"]}
    assert sorted(p.pid for p in llama_servers_of(inst.home)) == sorted(pids.values())


def test_auto_gives_a_model_alone_every_core_and_splits_them_once_another_is_resident(  # type: ignore[no-untyped-def]
        instance, models_dir: Path) -> None:
    """The default: the first model, alone, starts with every core; once a second is resident each gets half,
    the first by a restart once it is idle."""
    inst = instance(cycles(models_dir, "a", "b"), config(cpu_policy="auto")).start()
    first = load(inst, "a")
    cpu = cpu_of(inst)
    if cpu["cores"] < 2:
        pytest.skip("one core: every split is one thread")
    assert cpu["policy"] == "auto" and cpu["mode"] == "exclusive" and threads_of(first) == cpu["cores"]
    load(inst, "b")
    half = cpu["cores"] // 2
    pids = wait_until(lambda: all_run_with(inst, ("a", "b"), half), timeout=WAIT_S,
                      what=f"both engines to run with --threads {half}")
    assert pids["a"] != first  # restarted with its share, not left holding every core
    cpu = inst.status()["cpu"]
    assert cpu["mode"] == "shared" and cpu["at_once"] == 2 and cpu["threads"] == half
    assert len(llama_servers_of(inst.home)) == 2  # the first engine's predecessor is gone, not left running


def test_shared_engines_split_the_cores_whoever_is_resident(instance, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """`shared` (cpu_shared_engines = 0): a thread per engine from the start, so nothing restarts as models come."""
    inst = instance(cycles(models_dir, "a", "b"), config(cpu_policy="shared")).start()
    first = load(inst, "a")
    second = load(inst, "b")
    cpu = cpu_of(inst)
    assert cpu["mode"] == ("shared" if cpu["cores"] > 1 else "exclusive") and cpu["at_once"] == cpu["cores"]
    assert threads_of(first) == threads_of(second) == cpu["threads"] == 1
    assert engines(inst) == {"a": first, "b": second}


def computing_threads(status: dict) -> int:
    return sum(s["threads"] for s in status["slots"] if s.get("computing"))


@pytest.mark.parametrize("policy", ["auto", "exclusive"])  # shared admits as auto does with 8 models on <= 8 cores
async def test_eight_busy_models_never_hold_more_threads_than_cores(instance, models_dir: Path,  # type: ignore[no-untyped-def]
                                                                    policy: str) -> None:
    """Seen: 8 busy tiny models, each with threads for every core, took 20 s for what one thread each did in 0.2 s.
    Admission lets engines compute together only while their threads fit the cores; the rest queue."""
    models = tuple(f"m{i}" for i in range(8))
    settings = config(max_loaded_models=0, memory_budget_mb=16384, cpu_policy=policy)
    inst = instance(cycles(models_dir, *models), settings).start()
    for model in models:  # loaded first: admission, not loading, is what this measures
        load(inst, model)
    cpu = cpu_of(inst)
    cores = cpu["cores"]
    # Each load may change the shared split: wait until every engine was restarted with the final count.
    wait_until(lambda: all_run_with(inst, models, cpu["threads"]), timeout=WAIT_S,
               what=f"all eight engines to run with --threads {cpu['threads']}")
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(computing_threads(inst.status()))
            done.wait(0.02)  # poll interval of the sampler, which runs until the requests end

    body = {"messages": HELLO, "max_tokens": 16, "stream": True, "ignore_eos": True}

    async def one(http: aiohttp.ClientSession, model: str) -> int:
        async with http.post(inst.url + "/v1/chat/completions", json={"model": model, **body}) as resp:
            text = await resp.text()
            assert resp.status == 200, text
            return text.count('"content":"')

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            answers = await asyncio.gather(*(one(http, m) for m in models for _ in range(4)))
    finally:
        done.set()
        sampler.join()
    assert len(answers) == 32 and all(answers), answers
    assert samples and max(samples) <= cores, samples
    # The gateway returns a lease just after a stream's last byte: the last ones may still be held a moment.
    cpu = wait_until(lambda: (c := inst.status()["cpu"])["busy_threads"] == 0 and c["waiting"] == [] and c,
                     timeout=WAIT_S, what="every lease returned")
    assert 0 < cpu["busy_threads_peak"] <= cpu["cores"] == cores, cpu


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_a_narrowed_affinity_mask_is_the_plan(instance, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """LMForge confined to one CPU (as a container's cpuset or `taskset` does) plans one core, whatever the host."""
    ours = sorted(os.sched_getaffinity(0))
    if len(ours) < 2:
        pytest.skip("this process has one CPU already: narrowing it to one changes nothing")
    inst = instance(cycles(models_dir, "a"), config(cpu_policy="auto"))
    inst.start(prefix=("taskset", "-c", str(ours[0])))  # a CPU this process may use: CPU 0 may not be one
    pid = load(inst, "a")
    cpu = cpu_of(inst)
    assert cpu["plan"] is not None, "the prober sent no CPU plan"
    assert cpu["plan"]["affinity"] == 1 and cpu["plan"]["limited_by"] == "affinity"
    assert cpu["cores"] == 1 and cpu["threads"] == 1
    assert threads_of(pid) == 1


def held_busy(inst: Instance, old: dict[str, int]):  # type: ignore[no-untyped-def]
    """An engine with its request in flight must stay the one it started on: the busy model's slot, checked so at
    each read, and every pid read."""
    pids: list[int] = []

    def busy_slot() -> dict:
        slot = inst.slot_if_answering("busy") or {}
        if slot.get("pid"):
            pids.append(slot["pid"])
            assert slot["pid"] == old["busy"], f"the busy engine was restarted mid-request: {pids}"
        return slot
    return busy_slot, pids


def rethreaded(inst: Instance, model: str, old_pid: int) -> bool:
    """The model's engine is a new one, ready with one thread."""
    slot = inst.slot_if_answering(model) or {}
    return slot.get("state") == "ready" and slot["pid"] not in (None, old_pid) and threads_now(slot["pid"]) == 1


async def two_engines_one_busy(instance, models_dir: Path  # type: ignore[no-untyped-def]
                               ) -> tuple[Instance, dict[str, int], int]:
    """`exclusive`, models idle and busy loaded: the instance, their pids, the cores."""
    inst = instance(cycles(models_dir, "idle", "busy"), config(cpu_policy="exclusive"))
    # llama-server's own context shift: a generation outlives its context, so the busy stream lasts until the test
    # closes it however fast the engine runs, not the few seconds a small context holds.
    inst.env["LLAMA_ARG_CONTEXT_SHIFT"] = "1"
    inst.start()
    old = {model: await asyncio.to_thread(load, inst, model) for model in ("idle", "busy")}
    cores = cpu_of(inst)["cores"]
    if cores < 2:
        pytest.skip("one core: both policies give one thread, nothing to restart")
    assert threads_of(old["idle"]) == threads_of(old["busy"]) == cores
    return inst, old, cores


BUSY_BODY = {"model": "busy", "stream": True, "max_tokens": 100_000, "messages": HELLO}


def change_to_shared(inst: Instance, how: str) -> None:
    """config.toml says `shared` from now on: read live by the running manager, or by a new one that adopts the
    engines of one killed mid-stream."""
    if how == "live":
        (inst.home / "config.toml").write_text(config(cpu_policy="shared"))  # no restart: the manager reads it
        return
    inst.stop("manager", sig=signal.SIGKILL)  # the engines keep serving; the next manager adopts them
    (inst.home / "config.toml").write_text(config(cpu_policy="shared"))
    inst.start("manager", wait=False)


@pytest.mark.parametrize("how", ["live", "adopted"])
async def test_a_policy_change_restarts_idle_engines_only(instance, models_dir: Path,  # type: ignore[no-untyped-def]
                                                          how: str) -> None:
    """exclusive → shared: the idle engine comes back with one thread; the busy one keeps its pid and its stream,
    and is restarted with one thread only after its request ends. `adopted`, seen: a manager that adopted the
    engines of one killed mid-stream saw the busy engine idle (the gateway's hello had not yet declared its lease)
    and restarted it under its stream."""
    inst, old, cores = await two_engines_one_busy(instance, models_dir)
    busy_slot, busy_pids = held_busy(inst, old)
    async with aiohttp.ClientSession() as http:
        async with http.post(inst.url + "/v1/chat/completions", json=BUSY_BODY) as resp:
            await asyncio.wait_for(resp.content.readuntil(b"hello"), WAIT_S)
            await asyncio.to_thread(change_to_shared, inst, how)

            def idle_rethreaded() -> bool:
                busy_slot()
                return rethreaded(inst, "idle", old["idle"])
            await asyncio.to_thread(wait_until, idle_rethreaded, timeout=WAIT_S,
                                    what="the idle engine to be restarted with --threads 1")
            await asyncio.to_thread(wait_until, lambda: busy_slot().get("inflight") == 1, timeout=WAIT_S,
                                    what="the manager to know the busy engine's request")
            for _ in range(3):  # the busy engine still answers its request, as it was
                await asyncio.wait_for(resp.content.readuntil(b"world"), WAIT_S)
            slot = busy_slot()
            assert slot["state"] == "ready" and slot["inflight"] == 1 and threads_of(old["busy"]) == cores
            assert slot["adopted"] == (how == "adopted")
            assert inst.status()["cpu"]["mode"] == "shared"
        # The stream is closed: its request ends, and the engine is idle now.
    assert set(busy_pids) == {old["busy"]}, busy_pids  # never restarted while its request was in flight
    await asyncio.to_thread(wait_until, lambda: rethreaded(inst, "busy", old["busy"]), timeout=WAIT_S,
                            what="the busy engine, idle now, to be restarted with --threads 1")
    assert len(llama_servers_of(inst.home)) == 2


async def first_token_then_rest(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[float, str]:
    """When the stream's first token came (monotonic), and the rest of the stream. The gateway answers with
    headers only once the request holds a lease, so all of it runs as one task."""
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.content.readuntil(b"hello")
        first = time.monotonic()
        return first, await resp.text()


async def test_a_model_waiting_its_fair_share_goes_before_the_holders_new_requests(  # type: ignore[no-untyped-def]
        instance, models_dir: Path) -> None:
    """`exclusive`, cpu_fair_share_s = 1: a holds the cores with an endless stream; b waits. Once b waited its
    fair share, a's new request queues instead of batching in a's free engine slot, and b computes first when
    a's stream ends."""
    settings = config(cpu_policy="exclusive", cpu_fair_share_s=1.0) + "parallel = 2\n"  # into SMALL's [llama_cpp]
    inst = instance(cycles(models_dir, "a", "b"), settings)
    inst.env["LLAMA_ARG_CONTEXT_SHIFT"] = "1"  # a's stream lasts until the test closes it (see the tests above)
    inst.start()
    for model in ("a", "b"):
        await asyncio.to_thread(load, inst, model)
    assert (inst.slot("a") or {}).get("parallel") == 2
    short = {"stream": True, "max_tokens": 8, "messages": HELLO}

    def a_slot() -> dict:
        return inst.slot("a") or {}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        async with http.post(inst.url + "/v1/chat/completions",
                             json={"model": "a", "stream": True, "max_tokens": 100_000, "messages": HELLO}) as held:
            await asyncio.wait_for(held.content.readuntil(b"hello"), WAIT_S)
            b_done = asyncio.ensure_future(first_token_then_rest(http, inst.url, {"model": "b", **short}))
            await asyncio.to_thread(wait_until, lambda: inst.status()["cpu"]["waiting"] == ["b"], timeout=WAIT_S,
                                    what="b to wait for the cores")
            # Once b waited cpu_fair_share_s, a yields to it, and its slot says so.
            await asyncio.to_thread(wait_until, lambda: a_slot().get("yields_cores_to") == "b", timeout=WAIT_S,
                                    what="a to yield to b")
            a2_done = asyncio.ensure_future(first_token_then_rest(http, inst.url, {"model": "a", **short}))
            slot = await asyncio.to_thread(wait_until, lambda: (s := a_slot())["waiting"] == 1 and s, timeout=WAIT_S,
                                           what="a's new request to queue")
            assert slot["inflight"] == 1, slot  # queued behind b, not batched beside the held stream
            assert not b_done.done() and not a2_done.done()
        # a's held stream is closed: the cores go to b first.
        (b_first, b_text), (a2_first, a2_text) = await asyncio.wait_for(asyncio.gather(b_done, a2_done), WAIT_S)
    assert b_text.count('"content":"') and a2_text.count('"content":"')
    assert b_first < a2_first, f"a's queued request got its first token {b_first - a2_first:.2f}s before b's"
