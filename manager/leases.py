"""Leases: which peer holds which slot generation, so in-flight work is counted and returned."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from manager.slots import Slot, SlotKey

DEFAULT = "default"  # keep_alive not given: the slot's own default applies


@dataclass(frozen=True)
class Lease:
    id: int
    key: SlotKey
    generation: int
    peer: bytes
    keep_alive: float | None | str
    at: float = field(default_factory=time.monotonic)


class LeaseTable:
    """Owned by the manager loop. Granting and returning also move the slot's in-flight count."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._leases: dict[int, Lease] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def grant(self, slot: Slot, peer: bytes, keep_alive: float | None | str) -> Lease:
        lease = Lease(next(self._ids), slot.key, slot.generation, peer, keep_alive)
        self._leases[lease.id] = lease
        slot.inflight += 1
        slot.last_used_at = time.time()
        slot.expires_at = None  # in use: nothing expires until the last lease returns
        return lease

    def pop(self, lease_id: int) -> Lease | None:
        return self._leases.pop(lease_id, None)

    def of_peer(self, peer: bytes) -> list[Lease]:
        return [lease for lease in self._leases.values() if lease.peer == peer]
