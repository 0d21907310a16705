"""A loopback canary for SSRF tests: listeners that every refused URL points at, and that must see no connection."""

from __future__ import annotations

import socket
from typing import Any


class Canary:
    """Plain TCP listeners on 127.0.0.1 (and ::1 where this machine has it) that are never served: connections
    wait in the backlog, and `seen()` takes every one of them, so none can be missed."""

    def __init__(self) -> None:
        self.v4 = self._listen(socket.AF_INET, "127.0.0.1", 0)
        self.port = self.v4.getsockname()[1]
        self.v6: socket.socket | None = None
        try:
            self.v6 = self._listen(socket.AF_INET6, "::1", 0)
        except OSError:
            pass
        self.accepted: list[Any] = []

    @staticmethod
    def _listen(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def seen(self) -> list[Any]:
        for sock in filter(None, (self.v4, self.v6)):
            while True:
                try:
                    conn, peer = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                self.accepted.append(peer)
        return self.accepted

    def close(self) -> None:
        for sock in filter(None, (self.v4, self.v6)):
            sock.close()
