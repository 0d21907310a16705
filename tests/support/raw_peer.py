"""RawPeer: a loopback TCP server that answers HTTP requests badly, for the CLI's error paths.

It stands in for what the CLI may meet on the gateway's port: an error body that is
not JSON, a reply cut short, a stall, another program that does not speak HTTP.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

# Answers one request on a connection; may wait on the event (set when the test ends) to stall.
Reply = Callable[[socket.socket, threading.Event], None]


class RawPeer:
    """Reads one request per connection and answers it with `reply`."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.release = threading.Event()  # a peer that stalls holds the connection until the test ends
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.reply(conn, self.release)

    def close(self) -> None:
        self.release.set()
        self.sock.close()


def http(status: str, body: bytes, content_type: str = "application/json") -> Reply:
    def reply(conn: socket.socket, release: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
    return reply


HALF_A_BODY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":"


def stall(conn: socket.socket, release: threading.Event) -> None:
    release.wait(10)


def stall_mid_body(conn: socket.socket, release: threading.Event) -> None:
    conn.sendall(HALF_A_BODY)
    release.wait(10)


def cut_short(conn: socket.socket, release: threading.Event) -> None:
    conn.sendall(HALF_A_BODY)  # then the connection closes


def not_http(conn: socket.socket, release: threading.Event) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


def sse(*lines: bytes) -> Reply:
    def reply(conn: socket.socket, release: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                     + b"".join(lines))
    return reply
