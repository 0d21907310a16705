"""A peer on another machine, for tests: a network namespace joined to this one by a veth pair.

The host side of the pair is `HOST_IP`; the namespace has `PEER_IP` and
`PEER_IP2`, so one test can be two different LAN clients. Requests from the
peer run in a short Python subprocess inside the namespace (stdlib
http.client), so the gateway sees a real non-loopback socket. Needs root and
iproute2 (`ip netns`); `available()` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator

HOST_IP, PEER_IP, PEER_IP2 = "10.231.0.1", "10.231.0.2", "10.231.0.3"

_CLIENT = r"""
import http.client, json, sys
spec = json.loads(sys.argv[1])
try:
    conn = http.client.HTTPConnection(spec["host"], spec["port"], timeout=spec["timeout"],
                                      source_address=(spec["source"], 0))
    conn.request(spec["method"], spec["path"], body=spec["body"], headers=spec["headers"])
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    print(json.dumps({"status": resp.status, "headers": dict(resp.getheaders()), "body": body}))
except OSError as exc:
    print(json.dumps({"status": 0, "headers": {}, "body": f"{type(exc).__name__}: {exc}"}))
"""


def available() -> str | None:
    """None when a namespace can be made here; otherwise why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


@dataclass
class Reply:
    status: int  # 0: no HTTP answer (refused, reset, timed out); `body` says which
    headers: dict[str, str]
    body: str

    def json(self) -> object:
        return json.loads(self.body)


@dataclass(frozen=True)
class Peer:
    namespace: str

    def request(self, method: str, port: int, path: str, *, body: object | None = None,
                headers: dict[str, str] | None = None, host: str = HOST_IP, source: str = PEER_IP,
                timeout: float = 60) -> Reply:
        data = None if body is None else json.dumps(body)
        spec = {"host": host, "port": port, "method": method, "path": path, "body": data, "timeout": timeout,
                "headers": {"Content-Type": "application/json", **(headers or {})}, "source": source}
        out = subprocess.run(["ip", "netns", "exec", self.namespace, sys.executable, "-c", _CLIENT, json.dumps(spec)],
                             capture_output=True, text=True, timeout=timeout + 10, check=True)
        return Reply(**json.loads(out.stdout))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def lan_peer() -> Iterator[Peer]:
    """A namespace at PEER_IP (and PEER_IP2) that reaches this machine at HOST_IP over a veth pair."""
    tag = f"lf{os.getpid() % 100000}"
    namespace, outside, inside = f"{tag}ns", f"{tag}a", f"{tag}b"
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", namespace)
        _ip("addr", "add", f"{HOST_IP}/24", "dev", outside)
        _ip("link", "set", outside, "up")
        for args in (["addr", "add", f"{PEER_IP}/24", "dev", inside], ["addr", "add", f"{PEER_IP2}/24", "dev", inside],
                     ["link", "set", inside, "up"], ["link", "set", "lo", "up"]):
            _ip("netns", "exec", namespace, "ip", *args)
        yield Peer(namespace)
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
