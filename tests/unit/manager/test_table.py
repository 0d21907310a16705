"""The slot table's hard cases, driven deterministically: scripted runner reports, a hand-moved clock."""

from __future__ import annotations

import pytest

from manager.config import Settings
from manager.engines.base import MemoryPlan
from manager.slots import DEFAULT_KEEP as DEFAULT
from manager.protocol import (
    AcquireReply, ErrorCode, HeldLease, LeaseOutcome, LoadReply, Severity, SlotState, UnloadReply,
)
from manager.table import SlotTable
from tests.support.table_driver import CHAT, GATEWAY, MiB, Driver, FakeClock

# --- leases that cannot leak ---

def test_lease_ids_carry_the_epoch_so_no_two_managers_repeat_one() -> None:
    d = Driver()
    assert d.warm("a").lease_id == "ep0:1"
    other = SlotTable(Settings(memory_budget_mb=1000), "ep1", clock=FakeClock())
    assert other.leases.grant(d.table.slots[("a", CHAT)], GATEWAY, DEFAULT, since=0.0).id == "ep1:1"


def test_a_release_from_a_peer_that_does_not_hold_the_lease_is_ignored() -> None:
    d = Driver()
    lease = d.warm("a")
    d.release(lease.lease_id, peer=b"intruder")
    assert d.inflight("a") == 1
    d.release(lease.lease_id)
    assert d.inflight("a") == 0


def test_a_hello_returns_the_leases_its_peer_no_longer_declares() -> None:
    """The seen leak: the gateway gave up on an acquire while the manager stalled, then the grant came."""
    d = Driver()
    d.warm("a")
    d.hello(GATEWAY, leases=())
    assert d.inflight("a") == 0
    assert d.table.slots[("a", CHAT)].expires_at is not None  # idle again: keep_alive runs


def test_a_hello_keeps_declared_leases_and_moves_them_to_a_new_identity() -> None:
    d = Driver()
    lease = d.warm("a")
    held = HeldLease(lease_id=lease.lease_id, model="a", kind=CHAT, generation=lease.generation)
    d.hello(b"gateway-2", leases=(held,))
    assert d.inflight("a") == 1
    d.release(lease.lease_id, peer=b"gateway-2")
    assert d.inflight("a") == 0


def test_an_adopted_engine_takes_over_the_leases_the_gateway_declares() -> None:
    d = Driver()
    entry = d.entry("a")
    plan = MemoryPlan(weights=100 * MiB, kv_cache=0, compute=0, ctx_size=2048)
    slot = d.table.adopt(entry, CHAT, generation=7, pid=4242, port=30000, plan=plan, threads=2, engine="llama.cpp")
    d.settle()
    assert slot.state == SlotState.READY and slot.adopted
    d.hello(GATEWAY, leases=(HeldLease(lease_id="old:3", model="a", kind=CHAT, generation=7),
                             HeldLease(lease_id="old:4", model="a", kind=CHAT, generation=6)))  # a dead generation
    assert d.inflight("a") == 1
    d.release("old:3")
    assert d.inflight("a") == 0
    rid = d.acquire("a")
    assert d.lease(rid).generation == 7 and d.table.generations == 7


# --- never a dead engine ---

def test_an_engine_gone_release_fails_the_slot_at_once_and_the_retry_loads_a_fresh_one() -> None:
    d = Driver()
    lease = d.warm("a")
    d.release(lease.lease_id, LeaseOutcome.ENGINE_GONE)
    assert d.state("a") is None
    assert ("a", lease.generation) in d.stopped  # whatever is left of it is killed
    assert d.table.failures.last_errors["a"].severity == Severity.TRANSIENT
    rid = d.acquire("a")
    assert d.state("a") == SlotState.LOADING  # one failure: no backoff
    d.ready("a")
    assert d.lease(rid).generation > lease.generation


def test_the_late_runner_report_of_a_failed_slot_changes_nothing() -> None:
    d = Driver()
    lease = d.warm("a")
    d.release(lease.lease_id, LeaseOutcome.ENGINE_GONE)
    d.table.failed(("a", CHAT), lease.generation, "engine died", Severity.TRANSIENT, "")
    d.settle()
    assert d.table.failures.counts[("a", CHAT)].count == 1


# --- draining and keep_alive ---

def test_an_explicit_unload_drains_then_new_requests_wait_for_the_stop_and_load_again() -> None:
    d = Driver()
    first = d.warm("a")
    d.unload("a")
    assert d.stopped == []  # its request in flight finishes first
    late = d.acquire("a")
    assert late not in d.replies and d.state("a") == SlotState.PENDING
    d.release(first.lease_id)
    assert ("a", first.generation) in d.stopped
    assert d.state("a") == SlotState.PENDING  # still waiting for the old engine to go
    d.stopped_engine("a", first.generation)
    assert d.state("a") == SlotState.LOADING
    d.ready("a")
    assert d.lease(late).generation != first.generation


def test_keep_alive_zero_unloads_after_the_last_request_without_draining() -> None:
    d = Driver()
    a = d.warm("a")
    b = d.lease(d.acquire("a", keep_alive=0))  # the latest request says 0
    d.release(a.lease_id)
    c = d.acquire("a")  # not drained: still served
    assert isinstance(d.replies[c], AcquireReply)
    d.release(b.lease_id)
    d.release(d.lease(c).lease_id)  # the latest request (default keep_alive) wins
    assert d.state("a") == SlotState.READY


def test_keep_alive_zero_of_the_latest_request_unloads_once_every_request_ends() -> None:
    d = Driver()
    a = d.warm("a")
    b = d.lease(d.acquire("a", keep_alive="0"))
    d.release(b.lease_id)
    assert d.state("a") == SlotState.READY  # a is still in flight
    d.release(a.lease_id)
    assert d.state("a") is None and ("a", a.generation) in d.stopped


def test_idle_expiry_runs_on_the_clock() -> None:
    d = Driver()
    d.release(d.warm("a").lease_id)
    d.advance(299)
    assert d.state("a") == SlotState.READY
    d.advance(2)
    assert d.state("a") is None


# --- admission ---

def test_two_models_needing_the_same_memory_load_one_after_the_other() -> None:
    d = Driver(budget_mb=150)
    a = d.acquire("a")
    b = d.acquire("b")
    assert d.state("a") == SlotState.LOADING and d.state("b") == SlotState.PENDING
    d.ready("a")
    d.release(d.lease(a).lease_id)
    d.advance(0.6)  # b waited on a while a was busy: a goes once its traffic pauses
    assert ("a", 1) in d.stopped
    d.stopped_engine("a", 1)
    assert d.state("b") == SlotState.LOADING
    d.ready("b")
    assert isinstance(d.replies[b], AcquireReply)


def test_a_starved_load_gets_its_turn_after_the_fair_share_and_the_busy_model_queues_meanwhile() -> None:
    d = Driver(budget_mb=150, fair_share_s=5.0)
    a = d.warm("a")
    b = d.acquire("b")
    d.clock.t += 4
    more_a = d.acquire("a")
    assert isinstance(d.replies[more_a], AcquireReply)  # within the fair share: still served
    d.release(d.lease(more_a).lease_id)
    d.advance(2)
    queued = d.acquire("a")
    assert queued not in d.replies  # past it: a finishes what it has and queues the rest
    d.release(a.lease_id)
    d.stopped_engine("a", a.generation)
    d.ready("b")
    assert isinstance(d.replies[b], AcquireReply)
    assert d.state("a") == SlotState.PENDING  # the queued request waits for its own turn
    d.release(d.lease(b).lease_id)
    d.advance(0.6)  # b's own traffic pauses
    assert ("b", d.lease(b).generation) in d.stopped
    d.stopped_engine("b", d.lease(b).generation)
    d.ready("a")
    assert isinstance(d.replies[queued], AcquireReply)


def test_a_busy_model_is_not_made_to_yield_when_the_waiting_load_went_away() -> None:
    d = Driver(budget_mb=150, fair_share_s=5.0, drain_timeout_s=8.0)
    a = d.warm("a")
    d.acquire("b")
    d.advance(6)
    queued = d.acquire("a")
    assert queued not in d.replies
    d.advance(3)  # b's drain timeout passes: it is refused, and a serves its queue again
    assert isinstance(d.replies[queued], AcquireReply)
    assert d.inflight("a") == 2 and a.lease_id


def test_a_load_that_cannot_fit_beside_busy_models_is_refused_after_the_drain_timeout() -> None:
    d = Driver(budget_mb=150, drain_timeout_s=10.0)
    d.warm("a")
    b = d.acquire("b")
    d.advance(11)
    err = d.error(b)
    assert err.code == ErrorCode.NO_CAPACITY and "needs" in err.message and "free" in err.message


def test_one_slots_planning_error_fails_that_slot_and_every_other_goes_on() -> None:
    d = Driver()
    d.plan_errors["bad"] = ValueError("odd metadata value")
    bad = d.acquire("bad")
    good = d.acquire("good")
    assert d.error(bad).code == ErrorCode.LOAD_FAILED and "odd metadata" in d.error(bad).message
    assert d.state("good") == SlotState.LOADING
    d.ready("good")
    assert isinstance(d.replies[good], AcquireReply)


# --- loading, unloading, shutdown ---

def test_unload_while_loading_answers_its_waiters_and_stops_the_engine() -> None:
    d = Driver()
    rid = d.acquire("a")
    d.unload("a")
    assert d.error(rid).code == ErrorCode.LOAD_FAILED and "unloaded before it was ready" in d.error(rid).message
    assert ("a", 1) in d.stopped
    d.table.ready(("a", CHAT), 1)  # the runner's late report
    d.settle()
    assert d.state("a") is None


def test_waiters_share_one_load_and_get_their_leases_when_it_is_ready() -> None:
    d = Driver()
    rids = [d.acquire("a") for _ in range(3)]
    assert d.spawned == [("a", 1)]
    d.ready("a")
    assert len({d.lease(r).lease_id for r in rids}) == 3 and d.inflight("a") == 3


def test_shutdown_answers_every_waiter_and_stops_every_engine() -> None:
    d = Driver(budget_mb=150)
    d.warm("a")
    loading = d.acquire("a2", size_mb=40)
    pending = d.acquire("b")
    load = d.load("b")
    d.table.shutdown()
    d.settle()
    for rid in (loading, pending, load):
        assert d.error(rid).code == ErrorCode.SHUTTING_DOWN
    assert {m for m, _ in d.stopped} == {"a", "a2"}
    late = d.acquire("c")
    assert d.error(late).code == ErrorCode.SHUTTING_DOWN


def test_a_load_request_answers_when_ready_and_sets_the_models_keep_alive() -> None:
    d = Driver()
    rid = d.load("a", keep_alive="1m", pin=False)
    d.ready("a")
    reply = d.replies[rid]
    assert isinstance(reply, LoadReply) and reply.slot.keep_alive_s == 60


def test_unloading_everything_names_what_went() -> None:
    d = Driver()
    d.release(d.warm("a").lease_id)
    d.release(d.warm("b").lease_id)
    reply = d.replies[d.unload(None)]
    assert isinstance(reply, UnloadReply) and sorted(reply.unloaded) == ["a", "b"]


def test_what_a_measured_load_came_to_is_learned_when_it_stops() -> None:
    d = Driver()
    lease = d.warm("a")
    slot = d.table.slots[("a", CHAT)]
    d.table.measured({slot.pid: (80 * MiB, 70 * MiB)})
    d.settle()
    assert slot.measured_bytes == 80 * MiB and slot.at_ready_bytes == 80 * MiB
    d.release(lease.lease_id)
    d.unload("a")
    assert [(e.model, e.ctx_size) for e in d.learned] == [("a", 2048)]


@pytest.mark.parametrize("bad", ["soon", "5 minutes", True])
def test_a_bad_keep_alive_is_refused_and_nothing_is_created(bad: object) -> None:
    d = Driver()
    rid = d.acquire("a", keep_alive=bad)  # type: ignore[arg-type]
    assert d.error(rid).code == ErrorCode.BAD_REQUEST and d.state("a") is None


def test_a_model_idle_between_requests_of_steady_traffic_is_not_evicted_at_once() -> None:
    """Two clients, one per model, each sending its next request as the last ends: no swap per request."""
    d = Driver(budget_mb=150, fair_share_s=5.0)
    a = d.warm("a")
    b = d.acquire("b")  # waits: a is busy
    d.release(a.lease_id)  # a is idle for a moment...
    assert d.state("a") == SlotState.READY and d.stopped == []
    again = d.acquire("a")  # ...and its next request comes
    assert isinstance(d.replies[again], AcquireReply)
    d.release(d.lease(again).lease_id)
    d.advance(0.6)  # a's traffic pauses: now it goes
    assert ("a", a.generation) in d.stopped
    d.stopped_engine("a", a.generation)
    d.ready("b")
    assert isinstance(d.replies[b], AcquireReply)


def test_one_client_switching_models_swaps_at_once() -> None:
    d = Driver(budget_mb=150)
    d.release(d.warm("a").lease_id)
    d.acquire("b")  # a was idle when b came: nobody waited on it, so it goes now
    assert ("a", 1) in d.stopped
