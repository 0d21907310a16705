"""Slot states move only along the arrows of the state machine."""

from __future__ import annotations

import itertools

import pytest

from manager.engines.base import MemoryPlan
from manager.protocol import ModelEntry, SlotKind, SlotState
from manager.slots import IllegalTransition, Slot, label

S = SlotState
LEGAL = {
    (S.PENDING, S.LOADING), (S.PENDING, S.FAILED),
    (S.LOADING, S.READY), (S.LOADING, S.FAILED), (S.LOADING, S.STOPPING),
    (S.READY, S.STOPPING), (S.READY, S.FAILED),
    (S.STOPPING, S.UNLOADED), (S.STOPPING, S.FAILED),
    # an engine that parks (manager/table_parking.py)
    (S.READY, S.PARKING), (S.PARKING, S.PARKED), (S.PARKED, S.RESUMING), (S.RESUMING, S.READY),
    *((parked, end) for parked in (S.PARKING, S.PARKED, S.RESUMING) for end in (S.STOPPING, S.FAILED)),
}


def make_slot(state: SlotState = S.PENDING) -> Slot:
    entry = ModelEntry(name="tiny:1b", path="/m.gguf")
    slot = Slot(entry=entry, kind=SlotKind.EMBED, generation=1, engine="llama.cpp", keep_alive_s=300.0)
    slot.state = state
    return slot


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL))
def test_legal_transitions_return_the_previous_state(old: SlotState, new: SlotState) -> None:
    slot = make_slot(old)
    assert slot.change_state(new) == old
    assert slot.state == new


@pytest.mark.parametrize(("old", "new"), sorted(set(itertools.product(S, S)) - LEGAL))
def test_every_other_transition_is_refused(old: SlotState, new: SlotState) -> None:
    slot = make_slot(old)
    with pytest.raises(IllegalTransition):
        slot.change_state(new)
    assert slot.state == old


def test_the_charge_is_the_estimate_until_measured_then_what_it_holds_plus_what_it_will_grow_by() -> None:
    slot = make_slot(S.READY)
    slot.plan = MemoryPlan(weights=100, kv_cache=50, compute=10, ctx_size=2048, growth=30)
    assert slot.reserved == 160  # no measurement yet: the header's figure
    slot.measured_bytes = slot.at_ready_bytes = 90
    assert slot.reserved == 120  # an estimate too high comes down: 90 held, 30 still to grow
    slot.measured_bytes = 200
    assert slot.reserved == 200  # grown past it: what it holds
    slot.state = S.PENDING
    assert slot.reserved == 0  # a pending slot holds nothing yet


def test_what_an_earlier_load_came_to_is_the_next_estimate() -> None:
    slot = make_slot(S.READY)
    slot.plan = MemoryPlan(weights=100, kv_cache=50, compute=10, ctx_size=2048)
    slot.learned_bytes = 130
    assert slot.estimate == 130 and slot.reserved == 130


def test_info_carries_estimate_measured_and_charged_side_by_side() -> None:
    slot = make_slot(S.READY)
    slot.plan = MemoryPlan(weights=100, kv_cache=50, compute=10, ctx_size=2048, growth=5)
    slot.measured_bytes = slot.at_ready_bytes = 120
    info = slot.info()
    assert (info.estimate_bytes, info.measured_bytes, info.charged_bytes, info.ctx_size) == (160, 120, 125, 2048)


def test_labels_name_the_kind_unless_it_is_chat() -> None:
    assert label("m", SlotKind.CHAT) == "m"
    assert label("m", SlotKind.EMBED) == "m (embed)"
    assert make_slot().file_slug == "tiny_1b-embed"
