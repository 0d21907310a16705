"""Leases are the permits: each slot grants its engine's parallel slots, queues the rest in one bounded FIFO, and
refuses past it; a global cap bounds every slot together. Driven through the slot table, without processes."""

from __future__ import annotations

from manager.protocol import AbandonNotice, AcquireReply, ErrorCode, LoadReply, Severity, SlotState
from tests.support.table_driver import CHAT, GATEWAY, Driver


def waiting(d: Driver, model: str) -> list[int]:
    """The req_ids queued on the model's live slot, first served first."""
    return [w.request.req_id for w in d.table.slots[(model, CHAT)].queue]


def granted(d: Driver, rid: int) -> bool:
    return isinstance(d.replies.get(rid), AcquireReply)


# --- per slot: its engine's slots, then the queue ---

def test_a_ready_slot_grants_as_many_leases_as_its_engine_has_slots_then_queues() -> None:
    d = Driver(parallel=2)
    d.warm("a")
    second = d.acquire("a")
    third = d.acquire("a")
    assert granted(d, second) and third not in d.replies
    assert d.inflight("a") == 2 and waiting(d, "a") == [third]
    assert d.table.slots[("a", CHAT)].info().waiting == 1


def test_queued_acquires_are_served_first_come_first_served_as_leases_return() -> None:
    d = Driver(parallel=1)
    holder = d.warm("a")
    queued = [d.acquire("a") for _ in range(3)]
    assert not any(granted(d, r) for r in queued)
    d.release(holder.lease_id)
    assert [granted(d, r) for r in queued] == [True, False, False]
    d.release(d.lease(queued[0]).lease_id)
    assert [granted(d, r) for r in queued] == [True, True, False]
    assert d.lease(queued[1]).load_s == 0  # it waited for an engine slot, not for a load


def test_past_max_queue_an_acquire_is_refused_with_concurrency_limit_and_a_retry_estimate() -> None:
    d = Driver(parallel=1, max_queue=2)
    holder = d.warm("a")
    d.clock.t += 30
    d.release(holder.lease_id)  # the slot's leases are held 30 s: what a refusal's estimate goes by
    d.lease(d.acquire("a"))
    queued = [d.acquire("a") for _ in range(2)]
    refused = d.error(d.acquire("a"))
    assert refused.code == ErrorCode.CONCURRENCY_LIMIT and "max_queue = 2" in refused.message
    assert refused.retry_after_s == 60  # 3 requests ahead, 30 s each, one at a time: capped at a minute
    assert waiting(d, "a") == queued  # the refused one took no place


def test_a_refusal_never_says_to_retry_sooner_than_a_second() -> None:
    d = Driver(parallel=4, max_queue=0)
    for _ in range(4):
        d.acquire("a")
    d.ready("a")
    d.table.slots[("a", CHAT)].hold_s = 0.05  # its leases come back within 50 ms
    refused = d.error(d.acquire("a"))
    assert refused.code == ErrorCode.CONCURRENCY_LIMIT and refused.retry_after_s == 1.0


def test_a_cold_model_lets_its_engine_slots_and_max_queue_wait_for_the_load() -> None:
    d = Driver(parallel=2, max_queue=1)
    rids = [d.acquire("a") for _ in range(3)]
    refused = d.error(d.acquire("a"))
    assert refused.code == ErrorCode.CONCURRENCY_LIMIT and "still loading" in refused.message
    d.clock.t += 7  # the engine takes 7 s to load
    d.ready("a")
    assert [granted(d, r) for r in rids] == [True, True, False] and waiting(d, "a") == [rids[2]]
    assert d.lease(rids[0]).load_s == 7


def test_max_queue_zero_still_serves_a_cold_model_its_engine_slots() -> None:
    d = Driver(parallel=1, max_queue=0)
    first = d.acquire("a")
    assert d.error(d.acquire("a")).code == ErrorCode.CONCURRENCY_LIMIT
    d.ready("a")
    assert granted(d, first)


# --- across slots: max_inflight ---

def test_max_inflight_caps_leases_across_models_and_the_oldest_waiter_anywhere_is_served_first() -> None:
    d = Driver(parallel=4, max_inflight=2)
    a = d.warm("a")
    b = d.warm("b")
    late_a = d.acquire("a")
    late_b = d.acquire("b")
    assert not granted(d, late_a) and not granted(d, late_b)  # both engines have room; the cap has none
    d.release(b.lease_id)  # b's permit returns, and goes to the oldest waiter: a's
    assert granted(d, late_a) and not granted(d, late_b)
    d.release(a.lease_id)
    assert granted(d, late_b)
    assert len(d.table.leases) == 2


def test_at_max_inflight_with_the_models_queue_full_an_acquire_is_refused_naming_the_cap() -> None:
    d = Driver(parallel=4, max_inflight=1, max_queue=1)
    d.warm("a")
    d.acquire("a")
    refused = d.error(d.acquire("a"))
    assert refused.code == ErrorCode.CONCURRENCY_LIMIT and "max_inflight" in refused.message


def test_a_model_idle_only_because_the_cap_is_reached_does_not_expire_while_a_request_waits_for_it() -> None:
    d = Driver(parallel=4, max_inflight=1, keep_alive="10s")
    d.release(d.warm("a").lease_id)
    b = d.warm("b")
    queued = d.acquire("a")
    d.advance(60)
    assert d.state("a") == SlotState.READY and not granted(d, queued)
    d.release(b.lease_id)
    assert granted(d, queued)


# --- leaving the queue ---

def test_an_abandoned_acquire_leaves_its_queue_and_frees_its_place() -> None:
    d = Driver(parallel=1, max_queue=2)
    holder = d.warm("a")
    gone, stays = d.acquire("a"), d.acquire("a")
    d.abandon(gone, peer=b"someone-else")  # only the peer that sent it may take it back
    assert waiting(d, "a") == [gone, stays]
    d.abandon(gone)
    assert waiting(d, "a") == [stays]
    third = d.acquire("a")  # the freed place is taken
    assert waiting(d, "a") == [stays, third]
    d.release(holder.lease_id)
    assert granted(d, stays) and gone not in d.replies


def test_abandoning_the_last_request_a_slot_waited_for_starts_its_keep_alive() -> None:
    d = Driver(parallel=4, max_inflight=1, keep_alive="10s")
    d.release(d.warm("a").lease_id)
    d.warm("b")
    queued = d.acquire("a")  # waits for the cap
    assert d.table.slots[("a", CHAT)].expires_at is None
    d.abandon(queued)
    d.advance(11)
    assert d.state("a") is None


def test_a_granted_acquire_abandoned_too_late_changes_nothing() -> None:
    d = Driver(parallel=1)
    rid = d.acquire("a")
    d.ready("a")
    lease = d.lease(rid)
    d.abandon(rid)
    assert d.inflight("a") == 1
    d.release(lease.lease_id)
    assert d.inflight("a") == 0


# --- the control plane's moves act on the same queue ---

def test_an_explicit_unload_moves_queued_acquires_to_the_next_load() -> None:
    d = Driver(parallel=1)
    holder = d.warm("a")
    queued = d.acquire("a")
    d.unload("a")  # drains: the request in flight ends, the queue waits for a fresh load
    assert d.state("a") == SlotState.PENDING and waiting(d, "a") == [queued]
    d.release(holder.lease_id)
    d.stopped_engine("a", holder.generation)
    d.ready("a")
    assert d.lease(queued).generation > holder.generation


def test_a_yielding_slot_queues_new_acquires_and_they_follow_it_to_its_next_load() -> None:
    d = Driver(budget_mb=150, fair_share_s=5.0, parallel=4)
    a = d.warm("a")
    b = d.acquire("b")
    d.advance(6)
    queued = d.acquire("a")  # a engine slots are free, but a yields to b: it queues
    assert not granted(d, queued) and waiting(d, "a") == [queued]
    d.release(a.lease_id)
    d.stopped_engine("a", a.generation)
    assert waiting(d, "a") == [queued] and d.state("a") == SlotState.PENDING
    d.ready("b")
    d.release(d.lease(b).lease_id)
    d.advance(0.6)
    d.stopped_engine("b", d.lease(b).generation)
    d.ready("a")
    assert granted(d, queued)


def test_shutdown_refuses_every_queued_acquire() -> None:
    d = Driver(parallel=1)
    d.warm("a")
    queued = [d.acquire("a") for _ in range(2)]
    d.table.shutdown()
    d.settle()
    assert [d.error(r).code for r in queued] == [ErrorCode.SHUTTING_DOWN] * 2


def test_a_failed_engine_answers_its_queue() -> None:
    d = Driver(parallel=1)
    holder = d.warm("a")
    queued = d.acquire("a")
    d.table.failed(("a", CHAT), holder.generation, "engine exited with signal 9", Severity.TRANSIENT, "")
    d.settle()
    assert d.error(queued).code == ErrorCode.LOAD_FAILED and "signal 9" in d.error(queued).message


# --- loads are not acquires ---

def test_load_requests_take_no_permit_and_no_place_in_the_queue() -> None:
    d = Driver(parallel=1, max_queue=1)
    loads = [d.load("a") for _ in range(3)]
    acquires = [d.acquire("a") for _ in range(2)]  # the engine's one slot, and one queued
    assert d.error(d.acquire("a")).code == ErrorCode.CONCURRENCY_LIMIT
    d.ready("a")
    assert all(isinstance(d.replies[r], LoadReply) for r in loads)
    assert [granted(d, r) for r in acquires] == [True, False]
    assert isinstance(d.replies[d.load("a")], LoadReply)  # a ready model: answered at once, however busy


# --- the queue is visible ---

def test_each_queue_change_is_published_once_with_its_requests_in_order() -> None:
    d = Driver(parallel=1)
    holder = d.warm("a")
    d.queue_events.clear()  # its load's queue came and went
    first = d.acquire("a", trace_id="t1")
    second = d.acquire("a", trace_id="t2")
    events = d.queue_events
    assert [[(e.req_id, e.trace_id) for e in ev.queued] for ev in events] == [[(first, "t1")],
                                                                              [(first, "t1"), (second, "t2")]]
    assert all(e.peer == "gateway-1" for e in events[-1].queued) and not events[-1].loading
    d.release(holder.lease_id)
    assert [e.req_id for e in d.queue_events[-1].queued] == [second]
    d.abandon(second)
    assert d.queue_events[-1].queued == () and len(d.queue_events) == 4
    d.table.tick()
    d.settle()
    assert len(d.queue_events) == 4  # nothing changed: nothing published


def test_a_queue_that_changed_inside_but_kept_its_length_and_head_is_published() -> None:
    d = Driver(parallel=1)
    d.warm("a")
    first, second, third = (d.acquire("a") for _ in range(3))
    d.table.abandon(GATEWAY, AbandonNotice(req_id=second))  # no drain between the two changes
    fourth = d.acquire("a")
    assert [e.req_id for e in d.queue_events[-1].queued] == [first, third, fourth]


def test_a_queue_waiting_for_a_load_says_so_until_the_engine_is_ready() -> None:
    d = Driver(parallel=1)
    rids = [d.acquire("a") for _ in range(2)]
    assert d.queue_events[-1].loading and len(d.queue_events[-1].queued) == 2
    d.ready("a")
    last = d.queue_events[-1]
    assert not last.loading and [e.req_id for e in last.queued] == [rids[1]]
