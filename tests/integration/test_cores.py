"""Cores as a budget on a CPU host (manager/cores.py): thread counts, admission, the plan, policy changes.

Real LMForge, real llama-servers. Every model is the cycle model: it streams
" hello world ..." and never samples an end, so a request's length is its
max_tokens and a stream lasts until the test closes it, whatever the weights.
The thread count an engine runs is read from its own command line.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
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
    cpu = inst.status()["cpu"]
    assert cpu["policy"] == "exclusive" and cpu["mode"] == "exclusive" and cpu["at_once"] == 1
    assert {model: threads_of(pid) for model, pid in pids.items()} == {"a": cpu["cores"], "b": cpu["cores"]}
    assert {s["model"]: s["threads"] for s in inst.status()["slots"]} == {"a": cpu["cores"], "b": cpu["cores"]}
    assert sorted(p.pid for p in llama_servers_of(inst.home)) == sorted(pids.values())


def test_auto_gives_a_model_alone_every_core_and_splits_them_once_another_is_resident(  # type: ignore[no-untyped-def]
        instance, models_dir: Path) -> None:
    """The default: the first model, alone, starts with every core; once a second is resident each gets half,
    the first by a restart once it is idle."""
    inst = instance(cycles(models_dir, "a", "b"), config()).start()
    first = load(inst, "a")
    cpu = inst.status()["cpu"]
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
    cpu = inst.status()["cpu"]
    assert cpu["mode"] == ("shared" if cpu["cores"] > 1 else "exclusive") and cpu["at_once"] == cpu["cores"]
    assert threads_of(first) == threads_of(second) == cpu["threads"] == 1
    assert engines(inst) == {"a": first, "b": second}


def computing_threads(status: dict) -> int:
    return sum(s["threads"] for s in status["slots"] if s.get("computing"))


@pytest.mark.parametrize("policy", ["auto", "shared"])
async def test_eight_busy_models_never_hold_more_threads_than_cores(instance, models_dir: Path,  # type: ignore[no-untyped-def]
                                                                    policy: str) -> None:
    """Seen: 8 busy tiny models, each with threads for every core, took 20 s for what one thread each did in 0.2 s.
    Admission lets engines compute together only while their threads fit the cores; the rest queue."""
    models = tuple(f"m{i}" for i in range(8))
    settings = config(max_loaded_models=0, memory_budget_mb=16384, cpu_policy=policy)
    inst = instance(cycles(models_dir, *models), settings).start()
    for model in models:  # loaded first: admission, not loading, is what this measures
        load(inst, model)
    cpu = inst.status()["cpu"]
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
    cpu = inst.status()["cpu"]
    assert 0 < cpu["busy_threads_peak"] <= cpu["cores"] == cores, cpu
    assert cpu["busy_threads"] == 0 and cpu["waiting"] == []


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_a_narrowed_affinity_mask_is_the_plan(instance, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """LMForge confined to one CPU (as a container's cpuset or `taskset` does) plans one core, whatever the host."""
    inst = instance(cycles(models_dir, "a"), config())
    inst.start(prefix=("taskset", "-c", "0"))
    pid = load(inst, "a")
    cpu = inst.status()["cpu"]
    assert cpu["plan"] is not None, "the prober sent no CPU plan"
    assert cpu["plan"]["affinity"] == 1 and cpu["plan"]["limited_by"] == "affinity"
    assert cpu["cores"] == 1 and cpu["threads"] == 1
    assert threads_of(pid) == 1


async def test_a_policy_change_restarts_idle_engines_only(instance, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """exclusive → shared, then a manager restart: the idle engine comes back with one thread at once; the busy one
    keeps its pid and its stream, and is restarted with one thread only after its request ends."""
    inst = instance(cycles(models_dir, "idle", "busy"), config(cpu_policy="exclusive"))
    # llama-server's own context shift: a generation outlives its context, so the busy stream lasts until the test
    # closes it however fast the engine runs, not the few seconds a small context holds.
    inst.env["LLAMA_ARG_CONTEXT_SHIFT"] = "1"
    inst.start()
    old = {model: load(inst, model) for model in ("idle", "busy")}
    cores = inst.status()["cpu"]["cores"]
    if cores < 2:
        pytest.skip("one core: both policies give one thread, nothing to restart")
    assert threads_of(old["idle"]) == threads_of(old["busy"]) == cores
    busy_pids: list[int] = []

    def busy_slot() -> dict:
        """The busy model's slot, while its request is in flight: its engine must be the one it started on."""
        slot = inst.slot_if_answering("busy") or {}
        if slot.get("pid"):
            busy_pids.append(slot["pid"])
            assert slot["pid"] == old["busy"], f"the busy engine was restarted mid-request: {busy_pids}"
        return slot

    body = {"model": "busy", "stream": True, "max_tokens": 100_000, "messages": HELLO}
    async with aiohttp.ClientSession() as http:
        async with http.post(inst.url + "/v1/chat/completions", json=body) as resp:
            await asyncio.wait_for(resp.content.readuntil(b"hello"), WAIT_S)
            inst.stop("manager", sig=signal.SIGKILL)  # the engines keep serving; the next manager adopts them
            (inst.home / "config.toml").write_text(config(cpu_policy="shared"))
            inst.start("manager", wait=False)

            def idle_rethreaded() -> bool:
                busy_slot()
                slot = inst.slot_if_answering("idle") or {}
                return slot.get("state") == "ready" and slot["pid"] not in (None, old["idle"]) \
                    and threads_now(slot["pid"]) == 1
            await asyncio.to_thread(wait_until, idle_rethreaded, timeout=WAIT_S,
                                    what="the idle engine to be restarted with --threads 1")
            await asyncio.to_thread(wait_until, lambda: busy_slot().get("inflight") == 1, timeout=WAIT_S,
                                    what="the new manager to know the busy engine's request")
            for _ in range(3):  # the busy engine still answers its request, as it was
                await asyncio.wait_for(resp.content.readuntil(b"world"), WAIT_S)
            slot = busy_slot()
            assert slot["state"] == "ready" and slot["pid"] == old["busy"] and threads_of(old["busy"]) == cores
            assert inst.status()["cpu"]["mode"] == "shared"
        # The stream is closed: its request ends, and the engine is idle now.
    assert set(busy_pids) == {old["busy"]}, busy_pids  # never restarted while its request was in flight

    def busy_rethreaded() -> bool:
        slot = inst.slot("busy") or {}
        return slot.get("state") == "ready" and slot["pid"] != old["busy"] and threads_now(slot["pid"]) == 1
    await asyncio.to_thread(wait_until, busy_rethreaded, timeout=WAIT_S,
                            what="the busy engine, idle now, to be restarted with --threads 1")
    assert len(llama_servers_of(inst.home)) == 2
