"""The queue policy: leases are the permits, and each slot keeps one bounded FIFO of the acquires waiting for one.

A slot grants at most `parallel` leases (its engine's slots), and all slots together at
most `max_inflight` (0: no cap); on a CPU host an engine with nothing in flight also needs
its threads free (cores.py). Further acquires queue on their slot, behind any
waiting for its load: `max_queue` of them beyond the requests its engine will serve,
then the next is refused with `concurrency_limit` and a Retry-After. A freed permit goes
to the oldest queued acquire it can serve, on whichever slot. Pure decisions on the
table's slots; the SlotTable owns them and acts.
"""

from __future__ import annotations

from typing import Iterable

from manager.config import Settings
from manager.cores import Gate
from manager.protocol import ErrorCode, QueueEntry, QueueEvent, SlotKind, SlotState
from manager.refusals import Refusal
from manager.slots import Slot, SlotKey, Waiter

GRANT = "grant"
QUEUE = "queue"
UNKNOWN_HOLD_S = 5.0  # how long a lease is assumed held before one of the slot's has come back
RETRY_MAX_S = 60.0
HOLD_WEIGHT = 0.2  # the weight of the latest lease in a slot's mean hold time
TRACE_CHARS = 64  # of a request's trace id shown in its queue's events


def admit(slot: Slot, leases: int, settings: Settings, gate: Gate) -> str | Refusal:
    """What a new acquire gets on `slot`, with `leases` held across every slot and the cores as `gate` has them:
    GRANT now, QUEUE behind the acquires already waiting, or a refusal that says when to come back."""
    queued = len(slot.queue)
    capped = at_cap(leases, settings.max_inflight)
    if not queued and may_grant(slot, gate) and not capped:
        return GRANT
    # A slot that is not ready yet serves `parallel` of its queue as soon as it is; those are not queued beyond it.
    room = settings.max_queue + (0 if slot.state == SlotState.READY else slot.parallel)
    if queued < room:
        return QUEUE
    retry = retry_after(slot, queued)
    if capped and has_permit(slot):
        why = f"all {settings.max_inflight} requests LMForge serves at once (max_inflight) are in flight"
    elif slot.state != SlotState.READY:
        why = f"{slot.label} is still loading"
    elif has_permit(slot) and not gate.allows(slot):
        why = f"{slot.label} is waiting for CPU cores ({gate.busy} of {gate.cores} threads are computing)"
    else:
        why = f"{slot.label} is serving {slot.inflight} request(s) on its {slot.parallel} engine slot(s)"
    return Refusal(ErrorCode.CONCURRENCY_LIMIT, f"{why} and {queued} more are queued for {slot.label} "
                   f"(max_queue = {settings.max_queue}); retry in {retry:.0f}s", retry)


def has_permit(slot: Slot) -> bool:
    """Whether the slot may grant one more lease now: ready, not yielding its memory, an engine slot free."""
    return slot.state == SlotState.READY and not slot.yielding_to and slot.inflight < slot.parallel


def may_grant(slot: Slot, gate: Gate) -> bool:
    """An engine slot is free and the cores allow it (cores.py)."""
    return has_permit(slot) and gate.allows(slot)


def at_cap(leases: int, max_inflight: int) -> bool:
    return bool(max_inflight) and leases >= max_inflight


def next_grant(slots: Iterable[Slot], leases: int, max_inflight: int, gate: Gate) -> tuple[Slot, Waiter] | None:
    """The oldest queued acquire a permit (and the cores) is free for now, on any slot; None when there is none."""
    if at_cap(leases, max_inflight):
        return None
    heads = [(slot.queue[0], slot) for slot in slots if slot.queue and may_grant(slot, gate)]
    if not heads:
        return None
    waiter, slot = min(heads, key=lambda head: head[0].ticket)
    return slot, waiter


def find(slots: Iterable[Slot], peer: bytes, req_id: int) -> tuple[Slot, Waiter] | None:
    """The queued acquire `req_id` of `peer`, and its slot."""
    for slot in slots:
        for waiter in slot.queue:
            if (waiter.peer, waiter.request.req_id) == (peer, req_id):
                return slot, waiter
    return None


def retry_after(slot: Slot, queued: int) -> float:
    """Seconds until a refused request would have been served had there been room: the queue ahead of it, served
    `parallel` at a time, each held about as long as the slot's leases are; 1 to 60 s."""
    hold = slot.hold_s if slot.hold_s is not None else UNKNOWN_HOLD_S
    return min(RETRY_MAX_S, max(1.0, hold * (queued + 1) / slot.parallel))


def mean_hold(mean: float | None, held_s: float) -> float:
    """The slot's mean hold time with one more returned lease in it (recent leases weigh more)."""
    return held_s if mean is None else mean + HOLD_WEIGHT * (held_s - mean)


# A queue's length, first and last ticket, and whether it waits for a load. Tickets only grow, a queue gains only
# at its end and loses a grant at its head or an abandon in its length: between two drains any change shows.
Signature = tuple[int, int, int, bool]


class QueueBoard:
    """Each slot's queue as last published, so that a change is published once, however many waiters moved.

    Only a slot whose signature changed has its entries built: a drain costs one look
    at each queued slot, not one at each queued request.
    """

    def __init__(self) -> None:
        self._shown: dict[SlotKey, Signature] = {}

    def changes(self, slots: Iterable[Slot]) -> list[QueueEvent]:
        now = {slot.key: (signature(slot), slot) for slot in slots if slot.queue}
        events = []
        for key in sorted(self._shown.keys() - now.keys()):
            events.append(QueueEvent(model=key[0], kind=SlotKind(key[1]), queued=(), loading=False))
        for key, (sig, slot) in sorted(now.items()):
            if self._shown.get(key) != sig:
                events.append(QueueEvent(model=key[0], kind=SlotKind(key[1]), queued=entries(slot), loading=sig[3]))
        self._shown = {key: sig for key, (sig, _) in now.items()}
        return events


def signature(slot: Slot) -> Signature:
    return len(slot.queue), slot.queue[0].ticket, slot.queue[-1].ticket, slot.state != SlotState.READY


def entries(slot: Slot) -> tuple[QueueEntry, ...]:
    return tuple(QueueEntry(peer=(w.peer or b"").decode(errors="replace"), req_id=w.request.req_id,
                            trace_id=w.request.trace_id[:TRACE_CHARS])  # type: ignore[union-attr]
                 for w in slot.queue)
