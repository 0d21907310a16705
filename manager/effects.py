"""The effects of the slot table: what the service carries out after each message, and the table's clock."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Union

from manager.protocol import Event, Reply, SlotKind
from manager.slots import Slot


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
class Plan:
    slot: Slot  # read the header off the loop; answer with SlotTable.planned


@dataclass(frozen=True)
class Learn:
    model: str
    kind: SlotKind
    ctx_size: int
    bytes: int  # what this load came to; the next load's estimate
    basis: int  # the header's estimate it was learned against: a changed file or setting makes it stale


Effect = Union[Send, Publish, Spawn, Stop, Plan, Learn]


class Clock:
    def now(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()
