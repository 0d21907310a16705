"""PeerBook: the peers that said hello to this manager, as /lf/status shows them."""

from __future__ import annotations

from manager.protocol import PeerInfo, PeerRole


class PeerBook:
    """Owned by the slot table. One gateway, prober and downloader each; any number of tools."""

    def __init__(self) -> None:
        self._peers: dict[bytes, PeerInfo] = {}

    def greet(self, peer: bytes, role: PeerRole, pid: int, now: float) -> set[bytes]:
        """Record `peer`; returns it with the identities it replaces. A gateway, prober or downloader that says
        hello under a new identity has restarted, so its leases are the ones its role held before."""
        holders = {peer}
        if role != PeerRole.TOOL:
            holders |= {p for p, info in self._peers.items() if info.role == role}
        for old in holders - {peer}:
            del self._peers[old]
        self._peers[peer] = PeerInfo(role=role, pid=pid, connected_at=now)
        return holders

    def has(self, role: PeerRole) -> bool:
        return any(info.role == role for info in self._peers.values())

    def all(self) -> tuple[PeerInfo, ...]:
        return tuple(self._peers.values())
