"""Cores as a budget: thread counts from the policy, engines computing together never hold more threads than the
cores, a waiting model gets the cores within the fair-share bound, and only idle engines restart for a new count.
Driven through the slot table with a hand-moved clock, without processes."""

from __future__ import annotations

import pytest

from manager import cores
from manager.config import Settings
from manager.engines.base import MemoryPlan
from manager.protocol import (
    AcquireReply, CpuPlan, ErrorCode, GpuInfo, HardwareSnapshot, ReleaseNotice, SlotState,
)
from manager.slots import Slot
from tests.support.table_driver import CHAT, GATEWAY, Driver

GiB = 1024**3
MiB = 1024**2


def snapshot(plan_cores: int = 2, gpu: bool = False) -> HardwareSnapshot:
    plan = CpuPlan(cores=plan_cores, physical_cores=plan_cores, affinity=plan_cores)
    gpus = (GpuInfo(index=0, vendor="nvidia", name="gpu", vram_total=24 * GiB, vram_free=24 * GiB),) if gpu else ()
    return HardwareSnapshot(os="linux", arch="x86_64", cpu_model="cpu", cpu_cores=plan_cores,
                            cpu_threads=plan_cores, ram_total=64 * GiB, ram_available=64 * GiB, gpus=gpus,
                            cpu_plan=plan)


def driver(policy: str = "exclusive", plan_cores: int = 2, parallel: int = 4, **settings: object) -> Driver:
    d = Driver(parallel=parallel, cpu_policy=policy, **settings)
    d.table.set_hardware(snapshot(plan_cores))
    d.settle()
    return d


def ready(d: Driver, *models: str) -> None:
    """Each model loaded and idle: a lease taken while it loads, then returned."""
    for model in models:
        d.release(d.warm(model).lease_id)


def granted(d: Driver, rid: int) -> bool:
    return isinstance(d.replies.get(rid), AcquireReply)


def slot(d: Driver, model: str) -> Slot:
    return d.table.slots[(model, CHAT)]


def computing_threads(d: Driver) -> int:
    """What the invariant is about: threads of every engine with requests in flight, counted from the slots."""
    every = [*d.table.slots.values(), *d.table.retiring.values()]
    return sum(s.threads for s in every if s.state == SlotState.READY and s.inflight)


# --- the policy ---

@pytest.mark.parametrize("policy, plan, residents, expected", [
    ("exclusive", 2, 8, ("exclusive", 1, 2)),
    ("exclusive", 16, 3, ("exclusive", 1, 16)),
    ("shared", 2, 1, ("shared", 2, 1)),  # a fixed split: a model alone runs on its share
    ("shared", 16, 3, ("shared", 16, 1)),
    ("auto", 2, 1, ("exclusive", 1, 2)),  # one model alone gets every core
    ("auto", 2, 8, ("shared", 2, 1)),  # never more engines at once than cores
    ("auto", 16, 3, ("shared", 3, 5)),
    ("auto", 64, 1, ("exclusive", 1, 64)),
])
def test_the_policy_gives_engines_at_once_and_threads_each(policy: str, plan: int, residents: int,
                                                           expected: tuple[str, int, int]) -> None:
    shape = cores.split(Settings(cpu_policy=policy), plan, residents)
    assert (shape.mode, shape.at_once, shape.threads) == expected


def test_shared_engines_at_once_can_be_set_and_is_capped_by_the_cores() -> None:
    assert cores.split(Settings(cpu_policy="shared", cpu_shared_engines=2), 8, 5).threads == 4
    assert cores.split(Settings(cpu_policy="shared", cpu_shared_engines=9), 4, 5).at_once == 4
    assert cores.split(Settings(cpu_policy="shared", cpu_shared_engines=3), 8, 1).threads == 2  # whoever is resident


def test_the_budget_is_the_config_else_the_plan_else_the_snapshots_cores() -> None:
    plain = snapshot(6)
    assert cores.budget_cores(Settings(), plain) == 6
    assert cores.budget_cores(Settings(cpu_cores=3), plain) == 3
    older = HardwareSnapshot(os="linux", arch="x86_64", cpu_model="", cpu_cores=4, cpu_threads=8, ram_total=1,
                             ram_available=1)
    assert cores.budget_cores(Settings(), older) == 4


def test_each_engine_starts_with_the_threads_the_policy_gives_for_the_models_resident() -> None:
    d = driver("auto", plan_cores=4)
    ready(d, "a")
    assert slot(d, "a").threads == 4  # alone
    d.acquire("b")
    assert slot(d, "b").threads == 2  # two resident: two at once, two threads each


# --- admission ---

def test_exclusive_lets_one_engine_compute_at_a_time_and_the_other_model_queues() -> None:
    d = driver("exclusive")
    ready(d, "a", "b")
    holder = d.lease(d.acquire("a"))
    waiting = d.acquire("b")
    assert not granted(d, waiting) and d.table.cpu_status().waiting == ("b",)  # type: ignore[union-attr]
    d.release(holder.lease_id)
    assert granted(d, waiting) and computing_threads(d) == 2


def test_an_engine_computing_takes_more_requests_into_its_own_slots_without_more_threads() -> None:
    d = driver("exclusive", parallel=4)
    ready(d, "a")
    leases = [d.acquire("a") for _ in range(4)]
    assert all(granted(d, r) for r in leases) and computing_threads(d) == 2
    assert d.table.cpu_status().busy_threads == 2  # type: ignore[union-attr]


def test_eight_busy_models_never_hold_more_threads_than_the_cores() -> None:
    d = driver("auto")
    models = [f"m{i}" for i in range(8)]
    ready(d, *models)
    assert slot(d, "m0").threads == 2  # it loaded alone
    d.advance(cores.RETHREAD_IDLE_S + 0.25)  # idle: restarted with its share
    assert [m for m, _ in d.stopped] == ["m0"]
    d.stopped_engine("m0", d.stopped[0][1])
    d.ready("m0")
    asks = {m: [d.acquire(m) for _ in range(4)] for m in models}
    peak = computing_threads(d)
    served = 0
    for _ in range(200):  # release whatever is granted, one lease at a time, until all 32 are served
        lease = next((d.lease(r) for rs in asks.values() for r in rs
                      if granted(d, r) and d.lease(r).lease_id in d.table.leases), None)
        if lease is None:
            break
        d.release(lease.lease_id)
        served += 1
        peak = max(peak, computing_threads(d))
        assert computing_threads(d) <= 2
    assert served == 32 and all(slot(d, m).threads == 1 for m in models)
    assert peak == 2 and d.table.busy_threads_peak == 2


def test_a_freed_core_goes_to_the_model_that_waited_first_never_to_a_later_one() -> None:
    d = driver("exclusive")
    ready(d, "a", "b", "c")
    holder = d.lease(d.acquire("a"))
    first, second = d.acquire("b"), d.acquire("c")
    later = d.acquire("a")  # a computes: its new request batches in at once, within the bound
    assert granted(d, later)
    d.release(holder.lease_id)
    d.release(d.lease(later).lease_id)
    assert granted(d, first) and not granted(d, second)


def test_a_request_that_fits_the_free_cores_never_overtakes_a_model_waiting_for_more_of_them() -> None:
    d = driver("shared", plan_cores=2)
    ready(d, "a", "b", "c")
    slot(d, "a").threads, slot(d, "b").threads, slot(d, "c").threads = 1, 2, 1  # as a plan change leaves them
    holder = d.lease(d.acquire("a"))
    waiting = d.acquire("b")  # needs both cores; one is free
    late = d.acquire("c")  # would fit the free one
    assert not granted(d, waiting) and not granted(d, late)
    d.release(holder.lease_id)
    assert granted(d, waiting) and not granted(d, late)


def test_a_model_whose_waiter_leaves_gives_its_place_in_line_to_the_next() -> None:
    d = driver("exclusive")
    ready(d, "a", "b", "c")
    holder = d.lease(d.acquire("a"))
    gone, next_one = d.acquire("b"), d.acquire("c")
    d.abandon(gone)
    d.release(holder.lease_id)
    assert granted(d, next_one)


def test_an_engine_draining_for_an_unload_still_holds_its_threads_until_its_request_ends() -> None:
    d = driver("exclusive")
    ready(d, "a", "b")
    holder = d.lease(d.acquire("a"))
    d.unload("a")  # drains: off the table, its request still in flight
    waiting = d.acquire("b")
    assert not granted(d, waiting)
    d.release(holder.lease_id)
    assert granted(d, waiting)


def test_a_full_queue_waiting_for_cores_is_refused_saying_so() -> None:
    d = driver("exclusive", max_queue=1)
    ready(d, "a", "b")
    d.acquire("a")
    d.acquire("b")
    refused = d.error(d.acquire("b"))
    assert refused.code == ErrorCode.CONCURRENCY_LIMIT and "waiting for CPU cores (2 of 2" in refused.message


def test_engines_on_a_gpu_host_are_not_held_back_by_the_cores() -> None:
    d = Driver(cpu_policy="exclusive")
    d.table.set_hardware(snapshot(2, gpu=True))
    d.settle()
    ready(d, "a", "b")
    first, second = d.acquire("a"), d.acquire("b")
    assert granted(d, first) and granted(d, second)
    assert slot(d, "a").threads == 0 and d.table.cpu_status().mode == "gpu"  # type: ignore[union-attr]


# --- fairness ---

def test_a_waiting_model_gets_the_cores_within_the_bound_plus_the_request_in_flight() -> None:
    d = driver("exclusive", parallel=2, cpu_fair_share_s=1.0)
    ready(d, "a", "b")
    in_flight = d.lease(d.acquire("a"))
    waiting = d.acquire("b")
    waited_at = d.clock.t
    d.advance(0.5)
    within = d.acquire("a")  # steady traffic to a, inside the bound: it batches in
    assert granted(d, within)
    d.release(in_flight.lease_id)
    d.advance(0.75)  # b has waited its share: a yields
    assert slot(d, "a").cores_yield == "b"
    after = d.acquire("a")
    assert not granted(d, after)  # a's new request queues behind b
    d.advance(3.0)  # a's current request takes a while yet
    assert not granted(d, waiting)
    d.release(d.lease(within).lease_id)
    assert granted(d, waiting) and not granted(d, after)
    # b got the cores the moment a's last request in flight ended: it waited the bound (and a tick), then what a
    # had in flight when the bound ran out, and nothing more.
    assert d.clock.t - waited_at <= 1.0 + 0.25 + 3.0
    d.release(d.lease(waiting).lease_id)
    assert granted(d, after)


def test_turns_alternate_when_both_models_have_steady_traffic() -> None:
    d = driver("exclusive", parallel=1, cpu_fair_share_s=1.0)
    ready(d, "a", "b")
    a = d.lease(d.acquire("a"))
    a_next = d.acquire("a")  # a's own engine slot is full: it queues on a, before b asks
    b_waiting = d.acquire("b")
    d.advance(1.25)
    d.release(a.lease_id)
    assert granted(d, b_waiting) and not granted(d, a_next)  # b waited its share: it goes before a's older ask
    b_next = d.acquire("b")
    d.advance(1.25)
    d.release(d.lease(b_waiting).lease_id)
    assert granted(d, a_next) and not granted(d, b_next)


def test_a_yield_ends_when_nobody_waits_for_the_cores_any_more() -> None:
    d = driver("exclusive", cpu_fair_share_s=1.0)
    ready(d, "a", "b")
    d.acquire("a")
    waiting = d.acquire("b")
    d.advance(1.25)
    assert slot(d, "a").cores_yield == "b"
    d.abandon(waiting)
    d.advance(0.25)
    assert slot(d, "a").cores_yield is None and granted(d, d.acquire("a"))


# --- restarts for a new thread count ---

def test_a_new_resident_restarts_an_idle_engine_with_its_share() -> None:
    d = driver("auto", plan_cores=4)
    ready(d, "a", "b")  # a started alone with 4 threads, then b came: two at once, 2 each
    assert slot(d, "b").threads == 2
    d.advance(cores.RETHREAD_IDLE_S + 0.25)
    old = [g for m, g in d.spawned if m == "a"][0]
    assert d.stopped == [("a", old)] and slot(d, "a").state == SlotState.PENDING  # until the old one is gone
    d.stopped_engine("a", old)
    assert slot(d, "a").state == SlotState.LOADING
    d.ready("a")
    assert slot(d, "a").threads == 2 and "threads 4 → 2" in slot(d, "a").load_reason


def test_a_plan_change_restarts_an_engine_only_once_its_requests_end() -> None:
    d = driver("exclusive", plan_cores=2)
    ready(d, "a", "b")
    busy = d.lease(d.acquire("a"))
    d.table.set_hardware(snapshot(1))  # the quota or the affinity narrowed to one core
    d.advance(cores.RETHREAD_IDLE_S + 0.25)
    stopped = {m for m, _ in d.stopped}
    assert stopped == {"b"} and slot(d, "a").generation == busy.generation  # the busy one keeps running
    d.stopped_engine("b", d.stopped[0][1])
    d.ready("b")
    d.release(busy.lease_id)
    d.advance(cores.RETHREAD_IDLE_S + 0.25)
    assert ("a", busy.generation) in d.stopped
    d.stopped_engine("a", busy.generation)
    d.ready("a")
    assert slot(d, "a").threads == 1


def test_an_engine_in_steady_use_is_not_restarted_between_two_requests() -> None:
    d = driver("auto", plan_cores=4)
    ready(d, "a")
    d.acquire("b")
    for _ in range(8):  # a request to a every second: never idle long enough to restart
        d.release(d.lease(d.acquire("a")).lease_id)
        d.advance(1.0)
    assert slot(d, "a").threads == 4 and not [m for m, _ in d.stopped if m == "a"]


def test_an_engine_adopted_from_an_older_manager_with_too_many_threads_computes_alone() -> None:
    d = driver("shared", plan_cores=2)
    ready(d, "b")
    slot(d, "b").threads = 1
    adopted = d.table.adopt(d.entry("a"), CHAT, generation=50, pid=4242, port=30000,
                            plan=slot(d, "b").plan, threads=8, engine="llama.cpp")  # type: ignore[arg-type]
    d.settle()
    first = d.lease(d.acquire("a"))
    waiting = d.acquire("b")
    assert not granted(d, waiting)  # its 8 threads count as all 2 cores
    d.table.release(GATEWAY, ReleaseNotice(lease_id=first.lease_id))
    d.settle()
    assert granted(d, waiting) and adopted.threads == 8


def test_no_engine_is_restarted_for_its_threads_before_the_gateway_says_which_leases_it_holds() -> None:
    d = Driver(cpu_policy="exclusive")
    d.table.peers = type(d.table.peers)()  # a manager that just started: no gateway has said hello yet
    adopted = d.table.adopt(d.entry("a"), CHAT, generation=5, pid=4242, port=30000,
                            plan=MemoryPlan(weights=100 * MiB, kv_cache=0, compute=0, ctx_size=2048), threads=8,
                            engine="llama.cpp")
    d.table.set_hardware(snapshot(2))
    d.advance(cores.RETHREAD_IDLE_S + 5)
    assert not d.stopped and adopted.state == SlotState.READY  # it may be serving a stream
    d.hello(GATEWAY)  # declares no lease on it: idle after all
    d.advance(0.25)
    assert d.stopped == [("a", 5)]


def test_an_engine_started_before_the_first_snapshot_is_budgeted_as_on_a_cpu_host() -> None:
    d = Driver(cpu_policy="exclusive", cpu_cores=2)
    ready(d, "a")
    assert d.table.hardware is None and slot(d, "a").threads == 2


def test_a_restart_for_threads_keeps_the_models_keep_alive() -> None:
    d = driver("auto", plan_cores=4)
    rid = d.acquire("a", keep_alive="60s")
    d.ready("a")
    d.release(d.lease(rid).lease_id)
    expires = slot(d, "a").expires_at
    ready(d, "b")
    d.advance(cores.RETHREAD_IDLE_S + 0.25)
    assert [m for m, _ in d.stopped] == ["a"]
    d.stopped_engine("a", d.stopped[0][1])
    d.ready("a")
    assert slot(d, "a").threads == 2 and slot(d, "a").expires_at == expires  # no restart lengthens it


def test_a_load_that_evicts_the_idle_model_restarts_nothing() -> None:
    d = driver("auto", plan_cores=4, budget_mb=150)  # room for one model of 100 MiB
    ready(d, "a")
    d.advance(cores.RETHREAD_IDLE_S + 0.25)
    d.acquire("b")
    assert [m for m, _ in d.stopped] == ["a"] and ("a", CHAT) not in d.table.slots  # evicted, not reloaded
    d.stopped_engine("a", d.stopped[0][1])
    d.ready("b")
    assert slot(d, "b").threads == 4  # alone


def test_a_model_just_loaded_is_not_restarted_before_it_was_idle_a_while() -> None:
    d = driver("auto", plan_cores=4)
    rid = d.acquire("a", keep_alive=-1)  # kept however long the test's clock jumps
    d.ready("a")
    d.release(d.lease(rid).lease_id)
    d.clock.t += 3600  # a slow load of b: a has long been idle
    d.load("b")
    d.ready("b")
    d.advance(0.25)
    assert [m for m, _ in d.stopped] == ["a"]  # idle an hour: restarted for its share at once
    d.stopped_engine("a", d.stopped[0][1])
    d.ready("a")
    d.advance(cores.RETHREAD_IDLE_S - 1)
    assert slot(d, "a").state == SlotState.READY and len(d.stopped) == 1


def test_an_engine_about_to_expire_is_not_restarted_for_a_new_thread_count() -> None:
    d = driver("auto", keep_alive=f"{cores.RETHREAD_IDLE_S + 2}s")
    ready(d, "m0", "m1")  # m0 loaded alone with both cores; m1 came: m0's share is one now
    d.advance(cores.RETHREAD_IDLE_S + 0.25)  # idle long enough, but its keep_alive ends within the margin
    assert d.stopped == [] and slot(d, "m0").threads == 2 and slot(d, "m0").state == "ready"
