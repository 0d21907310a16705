"""ProberService against the manager's side of the real wire: hello, notices, restart, stop.

The manager here is only its sockets (manager/ipc.py) answering hellos and beating,
enough to see what the prober sends; the prober and ManagerClient are the real ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import msgspec
import pytest
import zmq
import zmq.asyncio

from manager.config import Paths
from manager.ipc import EventPublisher, endpoints, ensure_runtime_dir, make_socket
from manager.protocol import (
    HardwareNotice,
    HeartbeatEvent,
    HelloReply,
    HelloRequest,
    PeerRole,
    encoder,
    to_manager_decoder,
)
from prober.service import ProberService

WAIT = 10.0  # generous upper bound for one step; tests finish in well under a second


class WireManager:
    """The manager's sockets: a ROUTER that answers hellos and a PUB that beats."""

    def __init__(self, paths: Paths, epoch: str) -> None:
        self.epoch = epoch
        self._endpoints = endpoints(paths)
        self._runtime = paths.runtime
        self.hellos: list[HelloRequest] = []
        self.hello_seen = asyncio.Event()
        # (hellos seen when it arrived, notice): tells a reply to hello from a periodic send.
        self.notices: asyncio.Queue[tuple[int, HardwareNotice]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        ensure_runtime_dir(self._runtime)
        self._ctx = zmq.asyncio.Context()
        self._router = make_socket(self._ctx, zmq.ROUTER)
        self._router.bind(self._endpoints.control)
        self._pub = make_socket(self._ctx, zmq.PUB)
        self._pub.bind(self._endpoints.events)
        self._tasks = [asyncio.create_task(self._serve()), asyncio.create_task(self._beat())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._router.close()
        self._pub.close()
        self._ctx.term()

    async def _serve(self) -> None:
        while True:
            identity, data = await self._router.recv_multipart()
            message = to_manager_decoder.decode(data)
            if isinstance(message, HelloRequest):
                self.hellos.append(message)
                reply = HelloReply(req_id=message.req_id, epoch=self.epoch, manager_pid=os.getpid())
                await self._router.send_multipart([identity, encoder.encode(reply)])
                self.hello_seen.set()
            elif isinstance(message, HardwareNotice):
                self.notices.put_nowait((len(self.hellos), message))

    async def _beat(self) -> None:
        publisher = EventPublisher(self._pub)
        while True:
            publisher.publish(HeartbeatEvent(epoch=self.epoch, time=time.time()))
            await asyncio.sleep(0.05)  # the heartbeat period, not a wait for anything


class LogEvent(logging.Handler):
    """Sets an asyncio.Event when a record containing `text` is logged (on the loop's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def paths(tmp_path):
    return Paths(tmp_path / "home")


@pytest.fixture
async def manager(paths):
    wire = WireManager(paths, epoch="first")
    await wire.start()
    yield wire
    await wire.close()


@pytest.fixture
def log_event():
    logger = logging.getLogger("lmforge.prober")
    level = logger.level
    logger.setLevel(logging.INFO)
    handlers: list[LogEvent] = []

    def watch(text: str) -> LogEvent:
        handler = LogEvent(text)
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    yield watch
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)


async def _next_notice(wire: WireManager, after_hellos: int = 1) -> HardwareNotice:
    while True:
        hellos, notice = await asyncio.wait_for(wire.notices.get(), WAIT)
        if hellos >= after_hellos:
            return notice


async def _stop(service: ProberService, task: asyncio.Task[None]) -> None:
    service.stop()
    await asyncio.wait_for(task, WAIT)


def _static(notice: HardwareNotice) -> dict[str, object]:
    fields = msgspec.structs.asdict(notice.snapshot)
    for live in ("ram_available", "gpus", "taken_at"):
        fields.pop(live)
    return fields


async def test_full_snapshot_is_sent_at_hello_then_refreshes_follow(paths, manager):
    service = ProberService(paths, interval_s=0.02)
    task = asyncio.create_task(service.run())
    first = await _next_notice(manager)
    assert manager.hellos[0].role == PeerRole.PROBER
    assert first.snapshot.ram_total > 0 and first.snapshot.cpu_threads >= 1
    second = await _next_notice(manager)
    assert second.snapshot.taken_at > first.snapshot.taken_at
    assert _static(second) == _static(first)
    await _stop(service, task)


async def test_periodic_full_snapshots_carry_the_same_static_facts(paths, manager):
    service = ProberService(paths, interval_s=0.02, full_every_s=0.0)
    task = asyncio.create_task(service.run())
    notices = [await _next_notice(manager) for _ in range(3)]
    assert all(_static(notice) == _static(notices[0]) for notice in notices)
    assert service.sent >= 3
    await _stop(service, task)


async def test_prober_keeps_trying_while_no_manager_answers(paths, log_event):
    trying = log_event("still trying")
    service = ProberService(paths, connect_wait_s=0.05)
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(trying.seen.wait(), WAIT)
    assert not task.done()
    await _stop(service, task)


async def test_prober_started_before_the_manager_connects_when_it_comes_up(paths, log_event):
    probed = log_event("hardware:")
    service = ProberService(paths, interval_s=0.02)
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(probed.seen.wait(), WAIT)
    wire = WireManager(paths, epoch="late")
    await wire.start()
    try:
        notice = await _next_notice(wire)
        assert notice.snapshot.ram_total > 0
    finally:
        await _stop(service, task)
        await wire.close()


async def test_restarted_manager_gets_a_hello_and_the_snapshot_again(paths, manager):
    service = ProberService(paths, interval_s=0.02)
    task = asyncio.create_task(service.run())
    await _next_notice(manager)
    await manager.close()
    restarted = WireManager(paths, epoch="second")
    await restarted.start()
    try:
        notice = await _next_notice(restarted, after_hellos=1)
        assert restarted.hellos[0].role == PeerRole.PROBER
        assert notice.snapshot.ram_total > 0
        assert not task.done()
    finally:
        await _stop(service, task)
        await restarted.close()
    await manager.start()  # the fixture closes it again


async def test_stop_is_idempotent_and_logs_the_shutdown(paths, caplog):
    caplog.set_level(logging.INFO, logger="lmforge.prober")
    service = ProberService(paths, connect_wait_s=0.05)
    task = asyncio.create_task(service.run())
    service.stop("test")
    service.stop("test again")
    await asyncio.wait_for(task, WAIT)
    shutdown = [r.getMessage() for r in caplog.records if "[shutdown] prober" in r.getMessage()]
    assert shutdown == ["[shutdown] prober: test, stopping", "[shutdown] prober: stopped"]
