"""Who is calling: the peer's address (from the socket, or a trusted proxy's X-Forwarded-For), its networks,
and whether it is on this machine.

The address always comes from the socket. X-Forwarded-For is believed only when
the socket's peer is in `trusted_proxies`, and then only as far as it stays
inside them: walking the header from the right, the first address that is not
itself a trusted proxy is the caller (a client can prepend anything it likes).
IPv4-mapped IPv6 peers (`::ffff:10.0.0.5`, as a dual-stack `::` bind reports
IPv4 clients) are treated as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Union

from aiohttp import web

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Parsed CIDRs (config validation has already refused bad ones)."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def parse_address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def within(address: Address | None, nets: tuple[Network, ...]) -> bool:
    return address is not None and any(address.version == net.version and address in net for net in nets)


@dataclass(frozen=True)
class Peer:
    address: Address | None  # None: not an IP socket (never the case for the gateway's TCP listener)
    trusted: bool  # in trusted_networks: no key needed for inference (nor for status and metrics)
    interface: Address | None = None  # the socket's own address, the one the caller connected to

    @property
    def local(self) -> bool:
        """On this machine: a loopback address, or the very address it connected to. Bound to one LAN address,
        the gateway sees this machine's own clients come from that address, never from loopback."""
        return self.address is not None and (self.address.is_loopback or self.address == self.interface)

    def __str__(self) -> str:
        return str(self.address) if self.address is not None else "unknown"


def socket_address(request: web.Request) -> Address | None:
    peername = request.transport.get_extra_info("peername") if request.transport else None
    return parse_address(str(peername[0])) if peername else None


def local_address(request: web.Request) -> Address | None:
    """The address the caller connected to (the bind address, or the interface it arrived on for `0.0.0.0`)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return parse_address(str(sockname[0])) if sockname else None


def caller_address(request: web.Request, proxies: tuple[Network, ...]) -> Address | None:
    """The socket's peer; behind a trusted proxy, the nearest address in X-Forwarded-For that is not a proxy."""
    address = socket_address(request)
    if not within(address, proxies):
        return address
    hops = [hop for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")]
    for hop in reversed(hops):
        forwarded = parse_address(hop)
        if forwarded is None:
            return address  # garbage in the chain: believe only what we saw
        if not within(forwarded, proxies):
            return forwarded
        address = forwarded
    return address
