"""num_ctx: the context an engine starts with, and the table replacing an engine only for a larger ask."""

from __future__ import annotations

import logging

import pytest

from manager.context import outgrown, start_ctx
from manager.effects import Plan
from manager.engines.base import MemoryPlan
from manager.protocol import AcquireRequest, SlotState
from tests.support.table_driver import CHAT, GATEWAY, MiB, Driver


def plan(ctx: int, trained: int = 0) -> MemoryPlan:
    return MemoryPlan(weights=MiB, kv_cache=0, compute=0, ctx_size=ctx, ctx_max=trained)


# --- the policy ---

@pytest.mark.parametrize(("default", "asked", "trained", "ctx"), [
    (8192, 0, 16384, 8192),  # nothing asked: the default
    (8192, 2048, 16384, 8192),  # a smaller ask never shrinks it
    (8192, 12000, 16384, 12000),  # a larger ask is honoured
    (8192, 10**6, 16384, 16384),  # but never past the trained context
    (8192, 0, 4096, 4096),  # nor is the default
    (8192, 12000, 0, 12000),  # a header without a trained context caps nothing
])
def test_an_engine_starts_with_the_default_or_the_larger_ask_capped_by_the_trained_context(
        default: int, asked: int, trained: int, ctx: int) -> None:
    assert start_ctx(default, asked, trained) == ctx


def test_only_an_ask_beyond_the_engines_context_and_below_the_trained_one_outgrows_it() -> None:
    assert outgrown(plan(8192, 16384), 0) is None
    assert outgrown(plan(8192, 16384), 8192) is None
    assert outgrown(plan(8192, 16384), 12000) == 12000
    assert outgrown(plan(8192, 16384), 10**6) == 16384
    assert outgrown(plan(16384, 16384), 10**6) is None  # already all the model can take


# --- the table ---

def test_a_bigger_ask_reloads_once_after_the_requests_in_flight_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    d = Driver()
    first = d.warm("a")
    with caplog.at_level(logging.INFO, logger="lmforge.manager"):
        bigger = d.acquire("a", num_ctx=4096)
    assert "reloading a: context 2048 → 4096 asked by a request" in caplog.text
    assert bigger not in d.replies and d.stopped == []  # the old engine drains: its request is still running
    assert d.state("a") == SlotState.PENDING
    d.release(first.lease_id)
    assert d.stopped == [("a", 1)]
    d.stopped_engine("a", 1)
    d.ready("a")
    assert d.lease(bigger).generation == 2 and d.spawned == [("a", 1), ("a", 2)]
    info = d.table.slots[("a", CHAT)].info()
    assert info.ctx_size == 4096 and info.load_reason == "context 2048 → 4096 asked by a request"


def test_a_smaller_or_equal_ask_is_served_by_the_resident_engine() -> None:
    d = Driver()
    d.acquire("a", num_ctx=4096)
    d.ready("a")
    for asked in (0, 1024, 2048, 4096):
        lease = d.lease(d.acquire("a", num_ctx=asked))
        assert lease.generation == 1
        d.release(lease.lease_id)
    assert d.spawned == [("a", 1)] and d.stopped == []
    assert d.table.slots[("a", CHAT)].info().load_reason == "a request for it"


def test_an_ask_above_the_trained_context_is_capped_and_then_never_reloads() -> None:
    d = Driver()
    d.trained["a"] = 8192
    first = d.warm("a")
    rid = d.acquire("a", num_ctx=100_000)
    d.release(first.lease_id)
    d.stopped_engine("a", 1)
    d.ready("a")
    slot = d.table.slots[("a", CHAT)]
    assert d.lease(rid).generation == 2 and slot.plan.ctx_size == 8192
    assert slot.info().load_reason == "context 2048 → 8192 asked by a request"
    assert d.lease(d.acquire("a", num_ctx=50_000)).generation == 2  # all it can hold already
    assert d.spawned == [("a", 1), ("a", 2)]


def test_concurrent_asks_share_one_reload_and_never_swap_back() -> None:
    d = Driver(parallel=16)  # every request it holds at once gets a lease
    first = d.warm("a")
    asks = [d.acquire("a", num_ctx=n) for n in (8192, 1024, 4096, 0, 8192)]  # while the old engine drains
    d.release(first.lease_id)
    d.stopped_engine("a", 1)
    d.ready("a")
    assert [d.lease(r).generation for r in asks] == [2] * 5
    for asked in (1024, 8192, 0, 8192, 2048):  # alternating asks after the reload
        assert d.lease(d.acquire("a", num_ctx=asked)).generation == 2
    assert d.spawned == [("a", 1), ("a", 2)] and d.stopped == [("a", 1)]
    assert d.table.slots[("a", CHAT)].plan.ctx_size == 8192


def test_a_larger_ask_while_the_replacement_waits_raises_its_context_without_another_load() -> None:
    d = Driver()
    first = d.warm("a")
    d.acquire("a", num_ctx=4096)
    d.acquire("a", num_ctx=16384)  # the replacement was planned for 4096 already: planned again
    d.release(first.lease_id)
    d.stopped_engine("a", 1)
    d.ready("a")
    slot = d.table.slots[("a", CHAT)]
    assert d.spawned == [("a", 1), ("a", 2)] and slot.plan.ctx_size == 16384
    assert slot.info().load_reason == "context 2048 → 16384 asked by a request"


def test_a_bigger_ask_while_it_loads_restarts_the_load_and_keeps_its_waiters() -> None:
    d = Driver()
    cold = d.acquire("a")
    assert d.state("a") == SlotState.LOADING
    bigger = d.acquire("a", num_ctx=4096)
    assert d.stopped == [("a", 1)] and cold not in d.replies  # not refused: it moved to the new slot
    d.stopped_engine("a", 1)
    d.ready("a")
    assert d.lease(cold).generation == d.lease(bigger).generation == 2


def test_a_larger_ask_while_the_header_is_read_is_planned_again_before_the_load() -> None:
    d = Driver()
    d.table.acquire(GATEWAY, AcquireRequest(req_id=900, model="a"), d.entry("a"))
    plans = [e for e in d.table.drain() if isinstance(e, Plan)]
    assert len(plans) == 1
    bigger = d.acquire("a", num_ctx=8192)  # the header is still being read for the default context
    slot = d.table.slots[("a", CHAT)]
    d.table.planned(slot.key, slot.generation, plan(2048), None)  # the stale answer
    d.settle()
    d.ready("a")
    assert slot.plan.ctx_size == 8192 and d.spawned == [("a", 1)]
    assert d.lease(900).generation == d.lease(bigger).generation == 1


def test_a_pinned_model_keeps_its_pin_and_keep_alive_across_a_reload() -> None:
    d = Driver()
    d.load("a", pin=True, keep_alive="1h")
    d.ready("a")
    rid = d.load("a", num_ctx=4096)
    d.stopped_engine("a", 1)
    d.ready("a")
    slot = d.table.slots[("a", CHAT)]
    assert d.replies[rid].slot.ctx_size == 4096 and slot.pinned and slot.keep_alive_s == 3600
