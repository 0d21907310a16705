"""Leases: which peer holds which slot generation, so in-flight work is counted and returned."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from manager.slots import Slot, SlotKey


@dataclass(frozen=True)
class Lease:
    id: str
    key: SlotKey
    generation: int
    peer: bytes
    keep_alive: float | None | str
    since: float  # monotonic, from the table's clock: when it was granted (or taken over)
    trace: str = ""  # the request's id (X-Request-Id), for the engine log's marks (manager/engine_marks.py)


class LeaseTable:
    """Owned by the slot table. Ids are "<epoch>:<n>", so no two managers hand out the same one."""

    def __init__(self, epoch: str) -> None:
        self._epoch = epoch
        self._ids = itertools.count(1)
        self._leases: dict[str, Lease] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lease_id: str) -> bool:
        return lease_id in self._leases

    def grant(self, slot: Slot, peer: bytes, keep_alive: float | None | str, since: float, trace: str = "") -> Lease:
        return self.add(f"{self._epoch}:{next(self._ids)}", slot, peer, keep_alive, since, trace)

    def add(self, lease_id: str, slot: Slot, peer: bytes, keep_alive: float | None | str, since: float,
            trace: str = "") -> Lease:
        """Record a lease (granted now, or declared by a peer after a manager restart) and count it in flight."""
        lease = Lease(lease_id, slot.key, slot.generation, peer, keep_alive, since, trace)
        self._leases[lease.id] = lease
        slot.inflight += 1
        return lease

    def pop(self, lease_id: str, peer: bytes | None = None) -> Lease | None:
        """Remove a lease; with `peer`, only when that peer holds it (a release from anyone else is ignored)."""
        lease = self._leases.get(lease_id)
        if lease is None or (peer is not None and lease.peer != peer):
            return None
        return self._leases.pop(lease_id)

    def reconcile(self, peer: bytes, holders: set[bytes], held: set[str]) -> list[Lease]:
        """`peer` (also known as any of `holders`) holds exactly `held`: its other leases are removed and
        returned; the held ones move to `peer`, its identity now."""
        gone = []
        for lease in [lease for lease in self._leases.values() if lease.peer in holders]:
            if lease.id not in held:
                gone.append(self._leases.pop(lease.id))
            elif lease.peer != peer:
                self._leases[lease.id] = dataclasses.replace(lease, peer=peer)
        return gone

    def drop_slot(self, key: SlotKey, generation: int) -> None:
        """Forget the leases of a slot generation that is gone: no release of theirs counts any more."""
        for lease in [lease for lease in self._leases.values() if (lease.key, lease.generation) == (key, generation)]:
            del self._leases[lease.id]
