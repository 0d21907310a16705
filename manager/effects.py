"""The effects of the slot table: what the service carries out after each message, and the table's clock."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Union

from manager.protocol import ErrorCode, ErrorReply, Event, Reply, SlotEvent, SlotKind, SlotState
from manager.leases import Lease
from manager.slots import Slot, Waiter


@dataclass(frozen=True)
class Send:
    peer: bytes | None  # None: the manager's own request (auto_load); dropped
    message: Reply


@dataclass(frozen=True)
class Publish:
    event: Event


@dataclass(frozen=True)
class Spawn:
    slot: Slot  # start a runner for it


@dataclass(frozen=True)
class Stop:
    slot: Slot  # its runner stops the engine (TERM, grace, KILL) and reports


@dataclass(frozen=True)
class Turn:
    slot: Slot
    turn: str  # "park" or "resume": its runner does it between health probes, and reports


@dataclass(frozen=True)
class Plan:
    slot: Slot  # read the header off the loop; answer with SlotTable.planned


@dataclass(frozen=True)
class Learn:
    model: str
    kind: SlotKind
    ctx_size: int
    bytes: int  # what this load came to; the next load's estimate
    basis: int  # the header's estimate it was learned against: a changed file or setting makes it stale


@dataclass(frozen=True)
class Mark:
    slug: str  # the engine's log (Paths.engine_log)
    text: str  # "request <id> started (lease <id>)": manager/engine_marks.py writes it, off the loop


Effect = Union[Send, Publish, Spawn, Stop, Turn, Plan, Learn, Mark]

# How a load ended, as the status stream's `load` events tell it after its stages (manager/load_watch.py).
LOAD_ENDS = {(SlotState.LOADING, SlotState.READY): "ready", (SlotState.LOADING, SlotState.FAILED): "failed",
             (SlotState.PENDING, SlotState.FAILED): "failed", (SlotState.LOADING, SlotState.STOPPING): "stopped",
             # a parked engine taking its GPU memory back is loaded again (manager/table_parking.py)
             (SlotState.RESUMING, SlotState.READY): "ready", (SlotState.RESUMING, SlotState.FAILED): "failed",
             (SlotState.RESUMING, SlotState.STOPPING): "stopped"}


class Clock:
    def now(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()


class Outbox:
    """The effects of the messages handled so far, in order, until the service takes them."""

    def __init__(self) -> None:
        self._effects: list[Effect] = []

    def take(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects

    def add(self, effect: Effect) -> None:
        self._effects.append(effect)

    def send(self, peer: bytes | None, message: Reply) -> None:
        self.add(Send(peer, message))

    def error(self, peer: bytes | None, req_id: int, code: ErrorCode, message: str,
              retry: float | None = None) -> None:
        self.send(peer, ErrorReply(req_id=req_id, code=code, message=message, retry_after_s=retry))

    def refuse(self, waiters: list[Waiter], code: ErrorCode, message: str, retry: float | None = None) -> None:
        for w in waiters:
            self.error(w.peer, w.request.req_id, code, message, retry)

    def publish(self, event: Event) -> None:
        self.add(Publish(event))

    def mark(self, slot: Slot, lease: Lease, what: str) -> None:
        if lease.trace:
            self.add(Mark(slot.file_slug, f"request {lease.trace} {what} (lease {lease.id} on {slot.label})"))

    def slot(self, slot: Slot, previous: SlotState | None) -> None:
        self.publish(SlotEvent(slot=slot.info(), previous=previous))
        if (end := LOAD_ENDS.get((previous, slot.state))) is not None:  # type: ignore[arg-type]
            self.publish(slot.load_event(end, 1.0 if end == "ready" else None, slot.detail))
