"""Which addresses the image fetcher refuses, and why; IPv4 literals decoded as inet_aton reads them; the
allowlist (`image_allow_hosts`) that opens chosen hosts, ports and networks."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from manager.config import Settings, allowed_host

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

# Instance metadata services: AWS, GCP, Azure (169.254.169.254), AWS over IPv6, Alibaba, Oracle.
METADATA = frozenset(ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                                               "192.0.0.192"))
RFC1918 = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
UNIQUE_LOCAL = IPv6Network("fc00::/7")
CGNAT = IPv4Network("100.64.0.0/10")
IPV4_COMPATIBLE = IPv6Network("::/96")
NAT64 = IPv6Network("64:ff9b::/96")
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def ipv4_literal(host: str) -> IPv4Address | None:
    """`host` read as inet_aton reads it (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`), or None."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if (value := _number(part)) is None:
            return None
        values.append(value)
    *leading, last = values
    # The last part fills every byte the others leave: `127.1` is 127.0.0.1, `2130706433` all four bytes.
    if any(v > 255 for v in leading) or last >= 1 << 8 * (5 - len(values)):
        return None
    packed = 0
    for v in leading:
        packed = packed << 8 | v
    return IPv4Address(packed << 8 * (5 - len(values)) | last)


def _number(part: str) -> int | None:
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:], 16
        ok = bool(digits) and set(digits) <= HEX_DIGITS
    elif part.startswith("0") and len(part) > 1:
        digits, base = part[1:], 8
        ok = set(digits) <= set("01234567")
    else:
        digits, base = part, 10
        ok = part.isascii() and part.isdigit()
    return int(digits, base) if ok else None


def literal(host: str) -> Address | None:
    """The address `host` spells, in any form a resolver would take as an address, or None for a name."""
    try:
        return ip_address(host.strip("[]"))
    except ValueError:
        return ipv4_literal(host)


def refusal(address: Address) -> str | None:
    """Why the fetcher must not connect to `address` ("a loopback address"...), or None when it may."""
    if address in METADATA:
        return "a cloud metadata address"
    if isinstance(address, IPv6Address):
        if (embedded := _embedded(address)) is not None:
            form, v4 = embedded
            if why := refusal(v4):
                return f"{why} ({v4}) in {form} form"
        elif address.is_site_local:
            return "a site-local address (fec0::/10)"
    return _refusal_plain(address)


def _refusal_plain(address: Address) -> str | None:
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if any(address in n for n in RFC1918):
        return "a private address (RFC 1918)"
    if address in UNIQUE_LOCAL:
        return "a private address (unique local, fc00::/7)"
    if address in CGNAT:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if address.is_multicast:
        return "a multicast address"
    if not address.is_global:
        return "not a public address (reserved, benchmarking or documentation range)"
    return None


def _embedded(address: IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address an IPv6 one carries, and the form that carries it."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address.teredo is not None:
        return "Teredo", address.teredo[1]
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address in NAT64:
        return "NAT64", IPv4Address(int(address) & 0xFFFFFFFF)
    if address in IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are IPv6's own
        return "IPv4-compatible", IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class Allowlist:
    """Hosts (any port), host:port pairs and networks whose images may be fetched whatever their address."""

    hosts: frozenset[str] = frozenset()
    host_ports: frozenset[tuple[str, int]] = frozenset()
    networks: tuple[Network, ...] = ()

    def opens_host(self, host: str, port: int | None) -> bool:
        key = _host_key(host)
        return key in self.hosts or (key, port) in self.host_ports

    def opens_address(self, address: Address) -> bool:
        """A listed network opens its addresses, never a cloud metadata address (only a host entry naming it)."""
        return address not in METADATA and any(address in n for n in self.networks)


def allowlist(settings: Settings) -> Allowlist:
    """The parsed `image_allow_hosts` (built once per change, by LiveSettings.view; the config was checked)."""
    hosts: set[str] = set()
    host_ports: set[tuple[str, int]] = set()
    networks: list[Network] = []
    for entry in settings.image_allow_hosts:
        read = allowed_host(entry.strip())
        if not isinstance(read, tuple):
            networks.append(read)
        elif read[1] is None:
            hosts.add(_host_key(read[0]))
        else:
            host_ports.add((_host_key(read[0]), read[1]))
    return Allowlist(frozenset(hosts), frozenset(host_ports), tuple(networks))


def _host_key(host: str) -> str:
    """A host as the allowlist compares it: lower case, no trailing dot, an address in its canonical form."""
    host = host.strip("[]").rstrip(".").lower()
    address = literal(host)
    return str(address) if address is not None else host
