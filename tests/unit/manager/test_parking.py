"""Parking (manager/table_parking.py): on a GPU host, eviction parks an idle engine that can release its GPU memory
and keep its process (SGLang), and a request for it resumes it, through admission, without a new engine.
Driven through the table alone, on a recorded Linux + NVIDIA snapshot; the runner's side (the park and resume
calls between health probes) is tests/integration/test_sglang_standin.py's."""

from __future__ import annotations

import msgspec

from manager.protocol import (
    ErrorCode, GpuInfo, HardwareSnapshot, ModelEntry, Severity, SlotKind, SlotState,
)
from prober.engine_choice import Choice, choose_for
from tests.support.table_driver import CHAT, Driver

GiB = 1024**3


def host(ram_free_gib: int = 100, gpus: int = 1) -> HardwareSnapshot:
    return HardwareSnapshot(
        os="linux", arch="x86_64", cpu_model="test", cpu_cores=16, cpu_threads=32, ram_total=128 * GiB,
        ram_available=ram_free_gib * GiB,
        gpus=tuple(GpuInfo(index=i, vendor="nvidia", name="H200", vram_total=140 * GiB, vram_free=139 * GiB)
                   for i in range(gpus)),
    )


class SglangHost:
    """The choice table with every engine available; SGLang parks, as its adapter does."""

    def choose(self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None,
               exclude: tuple[str, ...] = ()) -> Choice:
        return choose_for(entry.format, kind, hardware, exclude=exclude)

    def parallel(self, engine: str, model: str = "") -> int:
        return 4

    def parks(self, engine: str) -> bool:
        return engine == "sglang"


def driver(snapshot: HardwareSnapshot | None = None, gguf: tuple[str, ...] = ()) -> Driver:
    """Models of 600 MB in a 1000 MB budget: one at a time. Safetensors (SGLang) unless named in `gguf`."""
    d = Driver(budget_mb=1000, engines=SglangHost())
    base = d.entry

    def entry(name: str, size_mb: int = 600) -> ModelEntry:
        e = base(name, 600)
        return e if name in gguf else msgspec.structs.replace(e, format="safetensors", path=f"/models/{name}")
    d.entry = entry  # type: ignore[method-assign]
    d.table.set_hardware(snapshot or host())
    d.settle()
    return d


def slot(d: Driver, model: str):  # type: ignore[no-untyped-def]
    return d.table.slots[(model, CHAT)]


def turned(d: Driver, model: str, turn: str) -> None:
    s = slot(d, model)
    d.table.turned(s.key, s.generation, turn)
    d.settle()


def loaded_then_idle(d: Driver, model: str, parks: str = "", **fields: object) -> None:
    """`model` loaded (once `parks` has parked to make room for it), served one request, idle now."""
    rid = d.acquire(model, **fields)  # type: ignore[arg-type]
    if parks:
        turned(d, parks, "park")
    d.ready(model)
    d.release(d.lease(rid).lease_id)


def test_a_parked_engine_is_resumed_for_its_next_request_without_a_new_engine():
    d = driver()
    loaded_then_idle(d, "a")
    rid_b = d.acquire("b")
    a = slot(d, "a")
    assert a.state == SlotState.PARKING and d.turns == [("a", a.generation, "park")]
    assert slot(d, "b").state == SlotState.PENDING  # it waits for a's memory, which a still holds
    assert d.table.budget().used_bytes > 0
    turned(d, "a", "park")
    assert a.state == SlotState.PARKED and a not in d.table.memory_holders()  # no GPU memory charged
    assert slot(d, "b").state == SlotState.LOADING
    assert a.info().state == "parked"
    d.ready("b")
    d.release(d.lease(rid_b).lease_id)
    spawned = list(d.spawned)
    rid_a = d.acquire("a")  # a request for the parked one: b is parked to make room, then a resumes
    b = slot(d, "b")
    assert b.state == SlotState.PARKING
    turned(d, "b", "park")
    assert a.state == SlotState.RESUMING and d.turns[-1] == ("a", a.generation, "resume")
    turned(d, "a", "resume")
    assert a.state == SlotState.READY and d.lease(rid_a).generation == a.generation
    assert d.spawned == spawned  # no engine was started again
    # Those following its load see it resume, then ready, in every dialect's load progress.
    assert [e.stage for e in d.load_events if e.model == "a"][-2:] == ["resuming", "ready"]


def test_engines_that_cannot_park_are_unloaded_as_before():
    d = driver(gguf=("a",))  # llama.cpp
    loaded_then_idle(d, "a")
    d.acquire("b")
    assert d.state("a") is None and d.stopped and d.turns == []


def test_no_parking_without_host_memory_for_the_weights_or_on_a_cpu_host():
    for snapshot in (host(ram_free_gib=0), host(gpus=0)):
        d = driver(snapshot)
        loaded_then_idle(d, "a")
        d.acquire("b")
        assert d.turns == [] and d.state("a") is None, snapshot


def test_a_parked_engine_still_expires_and_unloading_it_stops_its_process():
    d = driver()
    loaded_then_idle(d, "a", keep_alive="1m")
    d.acquire("b")
    turned(d, "a", "park")
    generation = slot(d, "a").generation
    d.advance(61)
    assert ("a", generation) in d.stopped and d.state("a") is None


def test_a_park_that_fails_unloads_the_engine_without_booking_a_failure_and_the_load_goes_on():
    """The runner stopped the engine whose park failed: the slot goes as an unload would, the model is not
    backed off (it was idle and healthy), and the load that wanted the room gets it."""
    d = driver()
    loaded_then_idle(d, "a")
    rid_b = d.acquire("b")
    a = slot(d, "a")
    d.table.failed(a.key, a.generation, "the engine could not park: 400 busy", Severity.TRANSIENT, "")
    d.settle()
    assert d.state("a") is None and a.state == SlotState.UNLOADED
    assert a.detail == "could not park (the engine could not park: 400 busy); unloaded instead"
    assert d.table.failures.last_errors == {}
    assert slot(d, "b").state == SlotState.LOADING
    d.ready("b")
    assert d.lease(rid_b).model == "b"


def test_requests_for_a_parked_engine_are_refused_with_no_capacity_when_nothing_can_make_room():
    d = driver()
    loaded_then_idle(d, "a")
    d.acquire("b")
    turned(d, "a", "park")
    d.ready("b")  # b is busy: its lease is held
    rid_a = d.acquire("a")
    d.advance(d.table.settings.drain_timeout_s + 1)
    assert d.error(rid_a).code == ErrorCode.NO_CAPACITY
    assert slot(d, "a").state == SlotState.PARKED  # the parked engine stays, for later


def test_a_parked_engine_whose_requests_were_refused_or_left_keeps_its_keep_alive():
    for leave in ("refused", "abandoned"):
        d = driver()
        loaded_then_idle(d, "a", keep_alive="1m")
        rid_b = d.acquire("b")
        turned(d, "a", "park")
        d.ready("b")  # b keeps its lease: a cannot come back
        rid_a = d.acquire("a")
        assert slot(d, "a").expires_at is None  # wanted: it does not expire while a request waits for it
        if leave == "refused":
            d.advance(d.table.settings.drain_timeout_s + 1)
            assert d.error(rid_a).code == ErrorCode.NO_CAPACITY
        else:
            d.abandon(rid_a)
        generation = slot(d, "a").generation
        d.advance(61)
        assert ("a", generation) in d.stopped, leave  # its keep_alive ran again, and ended
        del rid_b


def test_a_larger_context_asked_while_resuming_moves_the_waiting_requests_to_the_reload():
    d = driver()
    loaded_then_idle(d, "a")
    loaded_then_idle(d, "b", parks="a")
    rid_a = d.acquire("a")  # b parks for a, then a resumes
    turned(d, "b", "park")
    assert slot(d, "a").state == SlotState.RESUMING
    bigger = d.acquire("a", num_ctx=4096)
    assert rid_a not in d.replies and bigger not in d.replies  # both wait for the larger engine, none refused
    assert slot(d, "a").state in (SlotState.PENDING, SlotState.LOADING) and slot(d, "a").num_ctx == 4096


def test_a_request_for_a_parked_engine_gets_its_fair_share_of_a_busy_ones_memory():
    d = driver()
    loaded_then_idle(d, "a")
    d.acquire("b")
    turned(d, "a", "park")
    d.ready("b")  # b busy: its lease is held
    d.acquire("a")
    d.advance(d.table.settings.fair_share_s + 0.1)
    assert slot(d, "b").yielding_to == "a"  # b finishes what it serves and takes no more, so that a can resume


def test_host_memory_kept_by_parked_engines_counts_against_the_next_park():
    """1 GiB of host memory free: room for one parked model's 600 MB of weights, not two."""
    d = driver(host(ram_free_gib=1))
    d.table.settings = msgspec.structs.replace(d.table.settings, memory_budget_mb=1300)  # two models at once
    loaded_then_idle(d, "a")
    loaded_then_idle(d, "b")
    loaded_then_idle(d, "c", parks="a")  # the least recently used one parks for c
    b = slot(d, "b")
    d.acquire("d")  # b must go for d: host memory holds a's weights already, so b unloads
    assert ("b", b.generation) in d.stopped and slot(d, "a").state == SlotState.PARKED
