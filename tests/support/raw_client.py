"""Clients that misbehave on purpose over raw sockets: tricklers, stalled readers, idle connections.

A client library would send a request whole and read its answer; these send
bytes on their own schedule and watch for the server to close on them.
"""

from __future__ import annotations

import json
import select
import socket
import time

TRICKLE_S = 0.2  # a trickler's pace: one byte each time this passes without the server closing


class Dropped(Exception):
    """The server closed (or reset) the connection."""


def connect(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect, or the window is set
    sock.connect(("127.0.0.1", port))
    return sock


def request_head(method: str, path: str, port: int, length: int | None = None, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def wait_closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes the connection within `timeout` (what it sent before is skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            return False
        try:
            if sock.recv(1 << 16) == b"":
                return True
        except ConnectionResetError:
            return True
    return False


def trickle_until_dropped(sock: socket.socket, data: bytes) -> float:
    """Send `data` a byte every TRICKLE_S until the server drops the connection; the seconds until it did."""
    started = time.monotonic()
    for i in range(len(data)):
        try:
            sock.sendall(data[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        # The pace doubles as the wait for the drop: readable means closed (or an answer, which is a failure).
        if select.select([sock], [], [], TRICKLE_S)[0]:
            try:
                got = sock.recv(1 << 16)
            except ConnectionResetError:
                got = b""
            if got:
                raise AssertionError(f"the server answered a trickling client instead of dropping it: {got[:200]!r}")
            return time.monotonic() - started
    raise AssertionError(f"the connection outlived a {len(data) * TRICKLE_S:.0f}s trickle")


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], object]:
    """One HTTP/1.1 response with a Content-Length: (status, headers, JSON body)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise Dropped(f"closed after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise Dropped(f"closed mid-body after {body!r}")
        body += chunk
    return int(status_line.split()[1]), headers, json.loads(body) if body else None
