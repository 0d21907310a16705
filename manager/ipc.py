"""ZeroMQ endpoints, socket factory and the event publisher of the control plane.

The manager binds a ROUTER (requests) and a PUB (events) on ipc:// files in a
runtime directory of mode 0700, so only the owning user can reach it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from manager.config import Paths
from manager.protocol import TOPICS, Event, encoder


@dataclass(frozen=True)
class Endpoints:
    control: str
    events: str


def ensure_runtime_dir(path: Path) -> Path:
    """Create the runtime directory (and its per-user parent) with mode 0700."""
    for d in (path.parent, path):
        d.mkdir(mode=0o700, exist_ok=True)
        info = d.stat()
        if info.st_uid != os.getuid():
            raise PermissionError(f"{d} belongs to another user; refusing to use it")
        if stat.S_IMODE(info.st_mode) != 0o700:
            d.chmod(0o700)
    return path


def endpoints(paths: Paths) -> Endpoints:
    run = paths.runtime
    return Endpoints(control=f"ipc://{run}/ctl", events=f"ipc://{run}/events")


def remove_endpoints(paths: Paths) -> None:
    """Delete the manager's socket files (libzmq leaves them), then the directory if nothing else is in it."""
    for name in ("ctl", "events"):
        (paths.runtime / name).unlink(missing_ok=True)
    try:
        paths.runtime.rmdir()
    except OSError:
        pass  # supervisord's socket is still there; `lmforge stop` removes the directory


def make_socket(
    ctx: zmq.asyncio.Context, kind: int, *, identity: str | None = None
) -> zmq.asyncio.Socket:
    """Every control-plane socket gets the same options: no linger, generous HWMs."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    if kind == zmq.DEALER:
        # Fail fast (zmq.Again) while the manager is down instead of queueing
        # requests that a restarted manager would answer out of context.
        sock.setsockopt(zmq.IMMEDIATE, 1)
    return sock


class EventPublisher:
    """The manager's PUB socket: numbers every event and frames it as [topic, msgpack]."""

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self._sock = sock
        self.seq = 0

    def publish(self, event: Event) -> Event:
        self.seq += 1
        event = msgspec.structs.replace(event, seq=self.seq)
        # PUB never blocks: a slow subscriber loses messages past its HWM and
        # notices the gap in seq, then asks for a fresh snapshot.
        self._sock.send_multipart([TOPICS[type(event)], encoder.encode(event)], flags=zmq.NOBLOCK)
        return event
