"""Admission and eviction policy: pure functions over a view of the slot table.

The manager asks `plan_admission` what to do with a slot that waits for memory and
carries out the answer itself; nothing here spawns, kills or reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

from manager.protocol import SlotState

GiB = 1024**3


@dataclass(frozen=True)
class Resident:
    """A slot that holds (or is about to hold) memory, as the policy sees it."""

    key: Hashable
    state: SlotState
    reserved: int
    inflight: int
    last_used_at: float
    pinned: bool = False

    @property
    def idle(self) -> bool:
        return self.state == SlotState.READY and self.inflight == 0


@dataclass(frozen=True)
class Admit:
    pass


@dataclass(frozen=True)
class Evict:
    victims: tuple[Hashable, ...]


@dataclass(frozen=True)
class Wait:
    reason: str
    busy: tuple[Hashable, ...] = ()  # the busy slots whose requests it waits for, to go idle then leave


@dataclass(frozen=True)
class Reject:
    reason: str


Decision = Admit | Evict | Wait | Reject


def eviction_order(residents: Sequence[Resident]) -> list[Resident]:
    """Idle slots, the ones to give up first: unpinned before pinned, then LRU."""
    idle = [r for r in residents if r.idle]
    return sorted(idle, key=lambda r: (r.pinned, r.last_used_at))


def plan_admission(
    need: int, budget: int, residents: Sequence[Resident], max_loaded: int = 0
) -> Decision:
    """Decide how a slot needing `need` bytes gets in beside `residents`.

    `residents` are the other slots that hold memory (loading, ready, stopping; parking counts as stopping and
    resuming as loading: manager/table_parking.py).
    Busy slots are never chosen as victims; the caller waits for them to drain
    and turns a Wait into a Reject when its drain timeout runs out.
    """
    if need > budget:
        return Reject(
            f"needs {fmt_bytes(need)} but the whole memory budget is {fmt_bytes(budget)}"
        )
    used = sum(r.reserved for r in residents)
    stopping = [r for r in residents if r.state in (SlotState.STOPPING, SlotState.PARKING)]
    live = len(residents) - len(stopping)
    deficit = need - (budget - used)
    excess = live + 1 - max_loaded if max_loaded else 0
    if deficit <= 0 and excess <= 0:
        return Admit()

    freed = sum(r.reserved for r in stopping)
    if freed >= deficit and excess <= 0:
        parking = sum(1 for r in stopping if r.state == SlotState.PARKING)
        what = "to stop" if not parking else "to park" if parking == len(stopping) else "to stop or park"
        return Wait(f"waiting for {len(stopping)} model(s) {what}")

    victims: list[Resident] = []
    for r in eviction_order(residents):
        if freed >= deficit and len(victims) >= excess:
            break
        victims.append(r)
        freed += r.reserved
    if freed >= deficit and len(victims) >= excess:
        return Evict(tuple(r.key for r in victims))

    busy = sorted((r for r in residents if r.state == SlotState.READY and not r.idle),
                  key=lambda r: (r.pinned, r.last_used_at))
    loading = [r for r in residents if r.state in (SlotState.LOADING, SlotState.RESUMING)]
    needed: list[Resident] = []
    for r in busy:  # the fewest busy slots that make room, least recently used first
        if freed >= deficit and len(victims) + len(needed) >= excess:
            break
        needed.append(r)
        freed += r.reserved
    if freed >= deficit and len(victims) + len(needed) >= excess:
        return Wait(f"waiting for {len(needed)} busy model(s) to finish their requests",
                    tuple(r.key for r in needed))
    if loading and freed + sum(r.reserved for r in loading) >= deficit:
        return Wait(f"waiting for {len(loading)} loading model(s)")
    free = max(0, budget - used)
    why = f"needs {fmt_bytes(need)} but only {fmt_bytes(free)} of {fmt_bytes(budget)} is free"
    if excess > 0 and freed >= deficit:
        why = f"max_loaded_models ({max_loaded}) is reached"
    return Reject(f"{why}, and no idle model can be evicted to make room")


def fmt_bytes(n: int) -> str:
    if abs(n) >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / 1024**2:.0f} MiB"
