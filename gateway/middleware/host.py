"""The Host check: a request must name this server, so a foreign domain rebound to 127.0.0.1 gets nowhere.

DNS rebinding (CVE-2024-28224 against Ollama) points an attacker's domain at
127.0.0.1 after the page has loaded: the browser then treats LMForge as the
attacker's own origin, and only the Host header still says `evil.example`.
Accepted: loopback names and addresses, the bind address, the address of the
interface the client connected to (as Ollama accepts when bound to 0.0.0.0),
this machine's hostname (and `<hostname>.local`), and `allowed_hosts` (exact
names, `*.example.lan` for a domain's subdomains, or `*` for any). A request
without a Host header (HTTP/1.0 tools) comes from no browser and passes.
"""

from __future__ import annotations

import socket

from aiohttp import web

from gateway.errors import ApiError
from gateway.keys import live_settings
from gateway.middleware.peers import parse_address
from manager.config import Settings


def host_name(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:11430` -> `::1`, `Example:80` -> `example`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") > 1:  # a bare IPv6 literal
        return header
    return header.partition(":")[0].rstrip(".")


class HostRule:
    def __init__(self, bind: str, allowed: list[str]) -> None:
        hostname = socket.gethostname().lower()
        self.names = {"localhost", hostname, f"{hostname}.local", bind.lower().strip("[]")}
        self.names |= {name.lower() for name in allowed if not name.startswith("*")}
        self.suffixes = (".localhost", *(name[1:].lower() for name in allowed if name.startswith("*.")))
        self.any = "*" in allowed

    def allows(self, name: str, interface: str | None) -> bool:
        if self.any or name in self.names or name.endswith(self.suffixes):
            return True
        address = parse_address(name)
        if address is None:
            return False
        return address.is_loopback or (interface is not None and address == parse_address(interface))


def host_rule(settings: Settings) -> HostRule:
    return HostRule(settings.host, settings.allowed_hosts)


def setup_host(app: web.Application) -> None:
    live = live_settings(app)

    @web.middleware
    async def host_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        header = request.headers.get("Host")
        if header is not None:
            rule = live.view(host_rule)  # allowed_hosts as it stands now: it changes live
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            name = host_name(header)
            if not rule.allows(name, str(sockname[0]) if sockname else None):
                raise ApiError(403, f"Host {name!r} does not name this server; if it is a name for this machine, "
                               "add it to allowed_hosts in config.toml", code="host_not_allowed")
        return await handler(request)

    app.middlewares.append(host_middleware)
