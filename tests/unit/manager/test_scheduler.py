"""Admission and eviction policy, decided without any process."""

from __future__ import annotations

from manager.protocol import SlotState
from manager.scheduler import Admit, Evict, Reject, Resident, Wait, eviction_order, plan_admission

GB = 1_000_000_000
READY, LOADING, STOPPING = SlotState.READY, SlotState.LOADING, SlotState.STOPPING


def slot(key: str, size: float, *, state: SlotState = READY, inflight: int = 0, used: float = 0.0,
         pinned: bool = False) -> Resident:
    return Resident(key, state, int(size * GB), inflight, used, pinned)


def test_admits_when_the_model_fits_beside_the_others() -> None:
    assert plan_admission(2 * GB, 10 * GB, [slot("a", 4), slot("b", 3)]) == Admit()


def test_evicts_the_least_recently_used_idle_model_first() -> None:
    residents = [slot("new", 3, used=30), slot("old", 3, used=10), slot("mid", 3, used=20)]
    assert plan_admission(3 * GB, 10 * GB, residents) == Evict(("old",))


def test_evicts_as_many_as_needed_and_no_more() -> None:
    residents = [slot("a", 3, used=1), slot("b", 3, used=2), slot("c", 3, used=3)]
    assert plan_admission(6 * GB, 10 * GB, residents) == Evict(("a", "b"))


def test_never_evicts_a_model_with_requests_in_flight() -> None:
    residents = [slot("busy", 6, inflight=1, used=1), slot("idle", 3, used=5)]
    decision = plan_admission(5 * GB, 10 * GB, residents)
    assert isinstance(decision, Wait)  # evicting the idle one alone is not enough
    assert "busy" in decision.reason


def test_a_loading_model_counts_as_busy() -> None:
    decision = plan_admission(5 * GB, 10 * GB, [slot("loading", 6, state=LOADING)])
    assert isinstance(decision, Wait)


def test_pinned_models_are_evicted_last() -> None:
    residents = [slot("pinned", 4, used=1, pinned=True), slot("recent", 4, used=9)]
    assert plan_admission(4 * GB, 10 * GB, residents) == Evict(("recent",))
    assert plan_admission(8 * GB, 10 * GB, residents) == Evict(("recent", "pinned"))


def test_waits_for_models_already_stopping_instead_of_evicting_more() -> None:
    residents = [slot("going", 5, state=STOPPING), slot("idle", 4, used=1)]
    decision = plan_admission(5 * GB, 10 * GB, residents)
    assert isinstance(decision, Wait) and "stop" in decision.reason


def test_rejects_a_model_larger_than_the_whole_budget() -> None:
    decision = plan_admission(12 * GB, 10 * GB, [])
    assert isinstance(decision, Reject)
    assert "11.18 GiB" in decision.reason and "9.31 GiB" in decision.reason


def test_memory_held_past_the_budget_is_waited_for_not_refused() -> None:
    # The budget shrank below what is resident: busy models will free it eventually.
    residents = [slot("a", 6, inflight=1), slot("b", 6, inflight=1)]
    assert isinstance(plan_admission(9 * GB, 10 * GB, residents), Wait)


def test_max_loaded_models_evicts_one_even_when_memory_fits() -> None:
    residents = [slot("a", 1, used=1), slot("b", 1, used=2)]
    assert plan_admission(1 * GB, 100 * GB, residents, max_loaded=2) == Evict(("a",))
    assert plan_admission(1 * GB, 100 * GB, residents, max_loaded=3) == Admit()


def test_max_loaded_models_with_everything_busy_waits() -> None:
    residents = [slot("a", 1, inflight=2), slot("b", 1, inflight=1)]
    assert isinstance(plan_admission(1 * GB, 100 * GB, residents, max_loaded=2), Wait)


def test_stopping_models_do_not_count_toward_max_loaded() -> None:
    residents = [slot("a", 1, state=STOPPING), slot("b", 1, used=1)]
    assert plan_admission(1 * GB, 100 * GB, residents, max_loaded=2) == Admit()


def test_eviction_order_skips_busy_and_loading() -> None:
    residents = [slot("busy", 1, inflight=1), slot("loading", 1, state=LOADING), slot("idle", 1)]
    assert [r.key for r in eviction_order(residents)] == ["idle"]
