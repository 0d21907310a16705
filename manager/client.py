"""ManagerClient: how the gateway, prober and downloader talk to the manager.

A DEALER for requests (ids matched to futures by one reader task) and a SUB for
events. The heartbeat decides liveness: missed beats fail every waiter at once
with ManagerUnavailable, and a new epoch means the manager restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import msgspec
import zmq
import zmq.asyncio

from manager.config import Paths
from manager.ipc import endpoints, make_socket
from manager.protocol import (
    AbandonNotice,
    AcquireReply,
    AcquireRequest,
    ErrorCode,
    ErrorReply,
    Event,
    HeartbeatEvent,
    HeldLease,
    HelloReply,
    HelloRequest,
    LeaseOutcome,
    Notice,
    PeerRole,
    PingReply,
    PingRequest,
    QueueEvent,
    ReleaseNotice,
    Reply,
    Request,
    encoder,
    event_decoder,
    from_manager_decoder,
)

log = logging.getLogger("lmforge.client")


class ManagerUnavailable(Exception):
    """The manager is not answering: not started, restarting, or dead."""


class ManagerRestarted(ManagerUnavailable):
    """The manager restarted while a request was pending; its answer is lost."""


class ManagerTimeout(ManagerUnavailable):
    """No answer within the request's timeout while the manager beat on: for an acquire, a wait in its queue."""


class ManagerError(Exception):
    """The manager refused a request; `code` maps to an HTTP status."""

    def __init__(self, code: ErrorCode, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


MAX_ABANDONED = 10_000


@dataclass
class Holding:
    """A lease while its holder uses it; set `outcome` to say how the work ended."""

    reply: AcquireReply
    outcome: LeaseOutcome = LeaseOutcome.OK


@dataclass(frozen=True)
class QueueSpot:
    """Where a waiting acquire stands in its slot's queue (from the manager's QueueEvent)."""

    ahead: int  # acquires that will be served before it
    loading: bool  # the queue waits for the engine to load, not for a free engine slot


class Resync:
    """Put on event queues when events were lost: take a fresh snapshot."""


RESYNC = Resync()


class ManagerClient:
    """One peer's connection to the manager."""

    def __init__(
        self,
        paths: Paths,
        role: PeerRole,
        *,
        heartbeat_timeout: float = 3.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.role = role
        self._endpoints = endpoints(paths)
        self._ctx = zmq.asyncio.Context()
        self.identity = f"{role}-{os.getpid()}"  # how the manager names us, in QueueEvents too
        self._dealer = make_socket(self._ctx, zmq.DEALER, identity=self.identity)
        self._sub = make_socket(self._ctx, zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._ids = itertools.count(1)
        # Each waiting request's future, and when it was sent (wall clock: which manager it reached).
        self._pending: dict[int, tuple[asyncio.Future[Reply], float]] = {}
        # Requests whose caller stopped waiting, for whatever reason: an acquire's
        # late reply is a lease nobody will use, so it is handed straight back.
        self._abandoned: dict[int, None] = {}
        self._queued: dict[int, Callable[[QueueSpot], None]] = {}  # told where their acquire stands while it waits
        self.held: dict[str, HeldLease] = {}  # declared in every hello
        self._queues: set[asyncio.Queue[Event | Resync]] = set()
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._heartbeat_timeout = heartbeat_timeout
        self._request_timeout = request_timeout
        self._last_beat = 0.0
        self._last_seq = 0
        self._hello_task: asyncio.Task[None] | None = None
        self.epoch: str | None = None
        self.alive = False

    # --- lifecycle ---

    async def start(self, wait: float = 10.0, *, required: bool = True) -> None:
        """Connect and say hello. With required=False a manager that is not up yet is
        greeted as soon as its first heartbeat arrives, instead of raising."""
        self._dealer.connect(self._endpoints.control)
        self._sub.connect(self._endpoints.events)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read_replies()),
            loop.create_task(self._read_events()),
            loop.create_task(self._watch_heartbeat()),
        ]
        self._hello_task = loop.create_task(self._rehello(time.monotonic() + wait))
        if not await asyncio.shield(self._hello_task) and required:
            raise ManagerUnavailable(f"no LMForge manager answers at {self._endpoints.control}")

    async def close(self) -> None:
        for task in [*self._tasks, self._hello_task]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in self._tasks if t], return_exceptions=True)
        self._fail_pending(ManagerUnavailable("client closed"))
        self._dealer.close()
        self._sub.close()
        self._ctx.term()

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` after every successful hello (first connect and reconnects)."""
        self._on_connect.append(callback)

    # --- requests ---

    async def request(self, cls: type[Request], *, timeout: float | None = None,
                      queued: Callable[[QueueSpot], None] | None = None, **fields: Any) -> Any:
        """Send a request and return its reply; ErrorReply raises ManagerError. `queued` is called (on the event
        reader) with where an AcquireRequest stands each time its queue changes while it waits."""
        if not self.alive and cls is not HelloRequest:
            raise ManagerUnavailable("the LMForge manager is not running (lmforge status shows why)")
        req_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._send(cls(req_id=req_id, **fields))
        self._pending[req_id] = (future, time.time())
        if queued is not None:
            self._queued[req_id] = queued
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that arrives with the reply,
            # and a cancelled caller (a downloader's progress reporter) would then never stop.
            async with asyncio.timeout(timeout or self._request_timeout):
                reply = await future
        except TimeoutError:
            self._abandon(req_id, cls)
            raise ManagerTimeout(f"the manager did not answer {cls.__name__} in time") from None
        except BaseException:  # cancelled, or failed because the manager went quiet
            self._abandon(req_id, cls)
            raise
        finally:
            self._pending.pop(req_id, None)
            self._queued.pop(req_id, None)
        if isinstance(reply, ErrorReply):
            raise ManagerError(reply.code, reply.message, reply.retry_after_s)
        return reply

    def _abandon(self, req_id: int, cls: type[Request]) -> None:
        self._abandoned[req_id] = None
        while len(self._abandoned) > MAX_ABANDONED:  # replies that never came: forget the oldest
            del self._abandoned[next(iter(self._abandoned))]
        if cls is AcquireRequest:  # its place in the queue goes to the next request
            try:
                self.notify(AbandonNotice(req_id=req_id))
            except ManagerUnavailable:
                pass  # a manager that is gone holds no queue; a restarted one never saw it

    @contextlib.asynccontextmanager
    async def lease(self, *, timeout: float | None = None, queued: Callable[[QueueSpot], None] | None = None,
                    **fields: Any) -> AsyncIterator[Holding]:
        """Acquire a lease, hold it (declared in every hello) while the body runs, then return it. While the
        acquire waits in its model's queue, `queued` hears where it stands."""
        reply: AcquireReply = await self.request(AcquireRequest, timeout=timeout, queued=queued, **fields)
        holding = Holding(reply)
        self.held[reply.lease_id] = HeldLease(lease_id=reply.lease_id, model=reply.model, kind=reply.kind,
                                              generation=reply.generation)
        try:
            yield holding
        finally:
            del self.held[reply.lease_id]
            try:
                self.notify(ReleaseNotice(lease_id=reply.lease_id, outcome=holding.outcome))
            except ManagerUnavailable:
                # Not lost: the next hello declares what we hold, and this is not in it.
                log.warning("could not return lease %s now: the manager is down", reply.lease_id)

    async def ping(self, timeout: float) -> bool:
        """Whether the manager's loop answers a request now (heartbeats alone do not prove it)."""
        try:
            reply = await self.request(PingRequest, timeout=timeout)
        except (ManagerUnavailable, ManagerError):
            return False
        return isinstance(reply, PingReply)

    def notify(self, notice: Notice) -> None:
        self._send(notice)

    def _send(self, message: Request | Notice) -> None:
        # zmq.asyncio reports a refused non-blocking send in the returned future,
        # not by raising; with IMMEDIATE that means no manager is connected.
        sent = self._dealer.send(encoder.encode(message), flags=zmq.NOBLOCK)
        if sent.done() and isinstance(sent.exception(), zmq.Again):
            raise ManagerUnavailable("the LMForge manager is not running")

    # --- events ---

    def subscribe(self) -> asyncio.Queue[Event | Resync]:
        """A queue of every event from now on (heartbeats excluded), RESYNC on a gap."""
        queue: asyncio.Queue[Event | Resync] = asyncio.Queue()
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | Resync]) -> None:
        self._queues.discard(queue)

    # --- reader tasks ---

    async def _read_replies(self) -> None:
        while True:
            data = await self._dealer.recv()
            try:
                reply = from_manager_decoder.decode(data)
            except msgspec.DecodeError as exc:
                log.warning("dropping an undecodable reply: %s", exc)
                continue
            future, _ = self._pending.get(reply.req_id, (None, 0.0))
            if future is not None and not future.done():
                future.set_result(reply)
            elif reply.req_id in self._abandoned:
                del self._abandoned[reply.req_id]
                self._return_abandoned(reply)

    def _return_abandoned(self, reply: Reply) -> None:
        # A lease granted after its caller left would pin the model forever.
        if isinstance(reply, AcquireReply):
            try:
                self.notify(ReleaseNotice(lease_id=reply.lease_id, outcome=LeaseOutcome.CLIENT_GONE))
            except ManagerUnavailable:
                pass

    async def _read_events(self) -> None:
        while True:
            _topic, data = await self._sub.recv_multipart()
            try:
                event = event_decoder.decode(data)
            except msgspec.DecodeError as exc:
                log.warning("dropping an undecodable event: %s", exc)
                continue
            if isinstance(event, HeartbeatEvent):
                self._on_heartbeat(event)
            elif isinstance(event, QueueEvent) and self._queued:
                self._on_queue(event)
            gap = self._last_seq and event.seq != self._last_seq + 1
            self._last_seq = event.seq
            for queue in self._queues:
                if gap:
                    queue.put_nowait(RESYNC)
                if not isinstance(event, HeartbeatEvent):
                    queue.put_nowait(event)

    def _on_queue(self, event: QueueEvent) -> None:
        for ahead, entry in enumerate(event.queued):
            if entry.peer == self.identity and (told := self._queued.get(entry.req_id)) is not None:
                try:
                    told(QueueSpot(ahead=ahead, loading=event.loading))
                except Exception:  # the reader serves every request: one listener's bug must not stop it
                    log.exception("a queue listener failed")

    def _on_heartbeat(self, beat: HeartbeatEvent) -> None:
        self._last_beat = time.monotonic()
        if self._hello_task is not None or (beat.epoch == self.epoch and self.alive):
            return
        if beat.epoch == self.epoch:
            # The same manager, back from a stall: greet it again, so that it
            # reconciles the leases we hold against the ones it counts.
            log.info("the manager answers again (epoch %s)", beat.epoch)
            self._hello_task = asyncio.get_running_loop().create_task(self._rehello(time.monotonic() + 10.0))
            return
        if self.epoch is not None:
            log.warning("manager restarted (epoch %s -> %s)", self.epoch, beat.epoch)
            # Sent before the new manager took requests: the old one took them with it.
            self._fail_pending(ManagerRestarted("the manager restarted; retry the request"),
                               sent_before=beat.serving_since or None)
            self._abandoned.clear()  # the old manager will never answer them
            self.alive = False
            self._last_seq = 0
            for queue in self._queues:
                queue.put_nowait(RESYNC)
        loop = asyncio.get_running_loop()
        self._hello_task = loop.create_task(self._rehello(time.monotonic() + 10.0))

    async def _rehello(self, deadline: float) -> bool:
        try:
            await self._hello(deadline)
            return True
        except ManagerUnavailable as exc:
            log.warning("%s", exc)
            return False
        finally:
            self._hello_task = None

    async def _watch_heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_timeout / 4)
            silent = time.monotonic() - self._last_beat
            if self.alive and silent > self._heartbeat_timeout:
                log.warning("no heartbeat from the manager for %.1fs", silent)
                self.alive = False
                self._fail_pending(ManagerUnavailable("the manager stopped answering"))

    async def _hello(self, deadline: float) -> None:
        delay = 0.01
        while True:
            try:
                reply: HelloReply = await self.request(
                    HelloRequest, role=self.role, pid=os.getpid(), leases=tuple(self.held.values()), timeout=2.0
                )
                break
            except ManagerUnavailable:
                if time.monotonic() + delay > deadline:
                    raise ManagerUnavailable(
                        f"no LMForge manager answers at {self._endpoints.control}"
                    ) from None
                await asyncio.sleep(delay)  # backoff: the manager may still be binding
                delay = min(delay * 2, 0.25)
        self.epoch = reply.epoch
        self._last_beat = time.monotonic()
        self.alive = True
        for queue in self._queues:  # what subscribers saw may be stale: they take a fresh snapshot
            queue.put_nowait(RESYNC)
        for callback in self._on_connect:
            await callback()

    def _fail_pending(self, exc: Exception, sent_before: float | None = None) -> None:
        for future, sent_at in self._pending.values():
            if future.done() or (sent_before is not None and sent_at >= sent_before):
                continue
            future.set_exception(exc)
