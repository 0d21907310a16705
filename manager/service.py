"""ManagerService: the single-writer loop that owns the slot table.

Everything that changes a slot arrives in one inbox (peer messages, engine runner
reports, ticks) and is handled synchronously, one item at a time; slow work
(spawn, health wait, stop) runs in EngineRunner tasks that report back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass

import aiohttp
import msgspec
import zmq
import zmq.asyncio

from catalog.store import ModelStore, StoreError
from manager import budget as budgets
from manager.config import Paths, Settings
from manager.engines.llamacpp import LlamaCppAdapter
from manager.ipc import EventPublisher, endpoints, ensure_runtime_dir, make_socket, remove_endpoints
from manager.keepalive import KeepAliveError, parse_keep_alive
from manager.leases import DEFAULT, LeaseTable
from manager.process import group_memory, sweep_recorded
from manager.protocol import (
    PROTOCOL,
    AcquireReply,
    AcquireRequest,
    BudgetInfo,
    ErrorCode,
    ErrorReply,
    HardwareEvent,
    HardwareNotice,
    HeartbeatEvent,
    HelloReply,
    HelloRequest,
    ListModelsReply,
    ListModelsRequest,
    LoadReply,
    LoadRequest,
    ManagerStatus,
    ManagerStoppingEvent,
    PeerInfo,
    ReleaseNotice,
    Reply,
    SlotState,
    SnapshotReply,
    SnapshotRequest,
    UnloadReply,
    UnloadRequest,
    encoder,
    to_manager_decoder,
)
from manager.runner import EngineFailed, EngineReady, EngineSpawned, EngineStopped
from manager.lifecycle import SlotLifecycle
from manager.slots import HOLDS_MEMORY, Slot, SlotKey, Waiter
from prober.probes.nvidia import gpu_memory_by_pid

log = logging.getLogger("lmforge.manager")

HEARTBEAT_S = 1.0
TICK_S = 0.25
MEASURE_S = 1.0


REFUSED = object()  # a keep_alive that could not be parsed; the request was answered


@dataclass(frozen=True)
class Incoming:
    peer: bytes
    message: object


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Shutdown:
    signal: str


class ManagerService(SlotLifecycle):
    """See the module docstring. Handlers never await."""

    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings = settings
        self.paths = paths
        self.store = ModelStore(paths)
        self.adapter = LlamaCppAdapter(settings, paths)
        self.epoch = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        self.slots: dict[SlotKey, Slot] = {}
        self.retiring: dict[tuple[SlotKey, int], Slot] = {}  # stopping, off the table
        self.leases = LeaseTable()
        self.peers: dict[bytes, PeerInfo] = {}
        self.hardware = None
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.stopping = False
        self._generations = 0
        self._last_measure = 0.0
        self._ctx = zmq.asyncio.Context()
        self._router = make_socket(self._ctx, zmq.ROUTER)
        self._pub = make_socket(self._ctx, zmq.PUB)
        self.events = EventPublisher(self._pub)
        self._session: aiohttp.ClientSession | None = None
        self._handlers = {
            HelloRequest: self._on_hello,
            AcquireRequest: self._on_acquire,
            ReleaseNotice: self._on_release,
            LoadRequest: self._on_load,
            UnloadRequest: self._on_unload,
            SnapshotRequest: self._on_snapshot,
            ListModelsRequest: self._on_list_models,
            HardwareNotice: self._on_hardware,
        }
        self._internal = {
            EngineSpawned: self._on_spawned,
            EngineReady: self._on_ready,
            EngineFailed: self._on_failed,
            EngineStopped: self._on_stopped,
            Tick: self._on_tick,
        }
        super().__init__()

    # --- running ---

    async def run(self) -> None:
        killed = sweep_recorded(self.paths.engine_pids)
        if killed:
            log.warning("killed %d engine(s) left by a previous manager: %s", len(killed), killed)
        ensure_runtime_dir(self.paths.runtime)
        ends = endpoints(self.paths)
        self._router.bind(ends.control)
        self._pub.bind(ends.events)
        self._session = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.inbox.put_nowait, Shutdown(sig.name))
        tasks = [loop.create_task(c) for c in (self._read(), self._beat(), self._tick())]
        log.info("manager %s (epoch %s) listening on %s", os.getpid(), self.epoch, ends.control)
        self._auto_load()
        try:
            while not self.stopping:
                self._dispatch(await self.inbox.get())
        finally:
            for task in tasks:
                task.cancel()
            await self._shutdown()

    def _dispatch(self, item: object) -> None:
        try:
            if isinstance(item, Incoming):
                self._handlers[type(item.message)](item.peer, item.message)  # type: ignore[operator]
            elif isinstance(item, Shutdown):
                log.info("[shutdown] manager: %s received", item.signal)
                self.stopping = True
            else:
                self._internal[type(item)](item)  # type: ignore[operator]
        except Exception:
            # A bug must not take the loop (and every engine) down with it.
            log.exception("manager loop failed handling %r", item)
            if isinstance(item, Incoming) and hasattr(item.message, "req_id"):
                self.reply(item.peer, ErrorReply(req_id=item.message.req_id, code=ErrorCode.INTERNAL,
                                                 message="internal manager error; see the manager log"))

    async def _read(self) -> None:
        while True:
            peer, data = await self._router.recv_multipart()
            try:
                message = to_manager_decoder.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._refuse_undecodable(peer, data, exc)
                continue
            self.inbox.put_nowait(Incoming(peer, message))

    async def _beat(self) -> None:
        while True:
            self.events.publish(HeartbeatEvent(epoch=self.epoch, time=time.time()))
            await asyncio.sleep(HEARTBEAT_S)

    async def _tick(self) -> None:
        # Its own timer: expiry and deadlines run whatever the traffic.
        while True:
            await asyncio.sleep(TICK_S)
            self.inbox.put_nowait(Tick())

    def post(self, item: object) -> None:
        self.inbox.put_nowait(item)

    def reply(self, peer: bytes | None, message: Reply) -> None:
        if peer is None:
            return
        try:
            self._router.send_multipart([peer, encoder.encode(message)], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("reply to %r dropped: peer queue full", peer)

    def _refuse_undecodable(self, peer: bytes, data: bytes, exc: Exception) -> None:
        log.warning("undecodable message from %r: %s", peer, exc)
        try:
            raw = msgspec.msgpack.decode(data)
        except msgspec.DecodeError:
            return
        if isinstance(raw, dict) and isinstance(raw.get("req_id"), int):
            self.reply(peer, ErrorReply(req_id=raw["req_id"], code=ErrorCode.BAD_REQUEST,
                                        message=f"undecodable request: {exc}"))

    # --- peer messages ---

    def _on_hello(self, peer: bytes, req: HelloRequest) -> None:
        if req.protocol != PROTOCOL:
            self.reply(peer, ErrorReply(
                req_id=req.req_id, code=ErrorCode.PROTOCOL_MISMATCH,
                message=f"peer speaks protocol {req.protocol}, manager {PROTOCOL}: restart LMForge "
                        "so every process runs the same version"))
            return
        for old, info in list(self.peers.items()):
            if info.role == req.role and old != peer:
                # The peer restarted under a new identity: its leases died with it.
                del self.peers[old]
                for lease in self.leases.of_peer(old):
                    self._return_lease(lease.id)
        self.peers[peer] = PeerInfo(role=req.role, pid=req.pid, connected_at=time.time())
        log.info("%s connected (pid %d)", req.role, req.pid)
        self.reply(peer, HelloReply(req_id=req.req_id, epoch=self.epoch, manager_pid=os.getpid()))

    def _target(self, peer: bytes | None, req: AcquireRequest | LoadRequest) -> tuple[object, Slot] | None:
        """The request's parsed keep_alive and its slot; None once it was answered with an error."""
        keep = self._keep_alive(peer, req)
        slot = None if keep is REFUSED else self._slot_for(peer, req)
        return None if slot is None else (keep, slot)

    def _park(self, slot: Slot, peer: bytes | None, req: AcquireRequest | LoadRequest, keep: object) -> None:
        """Answer `req` when the slot is ready or failed; it may need loading first."""
        slot.waiters.append(Waiter(peer, req, keep))  # type: ignore[arg-type]
        self.schedule()

    def _on_acquire(self, peer: bytes, req: AcquireRequest) -> None:
        if (target := self._target(peer, req)) is None:
            return
        keep, slot = target
        if slot.state != SlotState.READY:
            self._park(slot, peer, req, keep)
            return
        lease = self.leases.grant(slot, peer, keep)  # type: ignore[arg-type]
        self.reply(peer, AcquireReply(req_id=req.req_id, lease_id=lease.id, model=slot.model,
                                      kind=slot.kind, base_url=slot.base_url, engine=slot.engine))

    def _on_load(self, peer: bytes | None, req: LoadRequest) -> None:
        if (target := self._target(peer, req)) is None:
            return
        keep, slot = target
        slot.pinned = slot.pinned or req.pin
        if keep != DEFAULT:
            slot.keep_alive_s = keep  # type: ignore[assignment]
        if slot.state == SlotState.READY:
            self._refresh_expiry(slot, DEFAULT)
            self.reply(peer, LoadReply(req_id=req.req_id, slot=slot.info()))
            self.publish_slot(slot, None)
        else:
            self._park(slot, peer, req, keep)

    def _on_release(self, peer: bytes, notice: ReleaseNotice) -> None:
        self._return_lease(notice.lease_id)

    def _on_unload(self, peer: bytes, req: UnloadRequest) -> None:
        names = []
        for slot in list(self.slots.values()):
            if req.model not in (None, slot.model) or req.kind not in (None, slot.kind):
                continue
            names.append(slot.label)
            self.unload(slot, "unloaded on request")
        if req.model is not None and not names and self.store.get(req.model) is None:
            self.reply(peer, ErrorReply(req_id=req.req_id, code=ErrorCode.MODEL_NOT_FOUND,
                                        message=f"model {req.model!r} is not installed"))
            return
        self.reply(peer, UnloadReply(req_id=req.req_id, unloaded=tuple(names)))
        self.schedule()

    def _on_snapshot(self, peer: bytes, req: SnapshotRequest) -> None:
        self.reply(peer, SnapshotReply(req_id=req.req_id, seq=self.events.seq, status=self.status()))

    def _on_list_models(self, peer: bytes, req: ListModelsRequest) -> None:
        try:
            models = tuple(self.store.list())
        except StoreError as exc:
            self.reply(peer, ErrorReply(req_id=req.req_id, code=ErrorCode.INTERNAL, message=str(exc)))
            return
        self.reply(peer, ListModelsReply(req_id=req.req_id, models=models))

    def _on_hardware(self, peer: bytes, notice: HardwareNotice) -> None:
        self.hardware = notice.snapshot
        self.events.publish(HardwareEvent(snapshot=notice.snapshot))
        self.schedule()

    # --- helpers for the handlers above ---

    def _keep_alive(self, peer: bytes | None, req: AcquireRequest | LoadRequest) -> object:
        """The request's keep_alive in seconds (None: forever), DEFAULT if absent, or REFUSED."""
        if req.keep_alive is None:
            return DEFAULT
        try:
            return parse_keep_alive(req.keep_alive)
        except KeepAliveError as exc:
            self.reply(peer, ErrorReply(req_id=req.req_id, code=ErrorCode.BAD_REQUEST, message=str(exc)))
            return REFUSED

    def _auto_load(self) -> None:
        for i, name in enumerate(self.settings.auto_load):
            self._on_load(None, LoadRequest(req_id=-(i + 1), model=name, pin=True))

    # --- status ---

    def budget(self) -> BudgetInfo:
        ours = sum(s.private_bytes or 0 for s in self.memory_holders())
        total, source = budgets.budget_total(self.settings, self.hardware, ours)
        used = sum(s.reserved for s in self.memory_holders())
        return BudgetInfo(total_bytes=total, used_bytes=used, source=source,
                          max_loaded_models=self.settings.max_loaded_models)

    def memory_holders(self) -> list[Slot]:
        return [s for s in [*self.slots.values(), *self.retiring.values()] if s.state in HOLDS_MEMORY]

    def status(self) -> ManagerStatus:
        slots = [*self.slots.values(), *self.retiring.values()]
        return ManagerStatus(
            epoch=self.epoch,
            started_at=self.started_at,
            slots=tuple(s.info() for s in slots),
            budget=self.budget(),
            last_errors=dict(self.last_errors),
            peers=tuple(self.peers.values()),
            hardware=self.hardware,
        )

    def _measure(self) -> None:
        """Each engine's real footprint, in the unit the budget counts: VRAM on a GPU host, else RAM."""
        on_gpu = gpu_memory_by_pid() if budgets.is_gpu_host(self.hardware) else None
        for slot in self.memory_holders():
            if slot.pid is None:
                continue
            if on_gpu is not None:
                slot.actual_bytes = slot.private_bytes = on_gpu.get(slot.pid)
            elif (measured := group_memory(slot.pid)) is not None:
                slot.actual_bytes, slot.private_bytes = measured

    def _on_tick(self, _: Tick) -> None:
        now = time.monotonic()
        if now - self._last_measure >= MEASURE_S:
            self._last_measure = now
            self._measure()
        self.expire_idle()
        self.schedule()

    # --- shutdown ---

    async def _shutdown(self) -> None:
        log.info("[shutdown] manager: stopping %d engine(s)", len(self.slots) + len(self.retiring))
        self.events.publish(ManagerStoppingEvent(epoch=self.epoch))
        for slot in list(self.slots.values()):
            self.fail_waiters(slot, ErrorCode.SHUTTING_DOWN, "LMForge is shutting down")
            self.unload(slot, "manager shutting down", force=True)
        runners = [s.task for s in self.retiring.values() if s.task is not None]
        if runners:
            await asyncio.wait(runners, timeout=self.settings.stop_grace_s + 2.0)
        for task in runners:
            task.cancel()
        if self._session is not None:
            await self._session.close()
        self._pub.setsockopt(zmq.LINGER, 200)  # let the stopping event out
        self._router.close()
        self._pub.close()
        self._ctx.term()
        remove_endpoints(self.paths)
        log.info("[shutdown] manager: done")
