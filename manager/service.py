"""ManagerService: the manager process's loop, sockets and tasks around the slot table.

Everything that changes a slot arrives in one inbox (peer messages, runner reports,
off-loop reads, ticks) and is handed to the SlotTable, one item at a time; the
service then carries out the table's effects. Slow work (engines, header and store
reads, memory readings) runs in tasks and threads that report back to the inbox.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import aiohttp
import msgspec
import zmq
import zmq.asyncio

from catalog.store import ModelStore, StoreError
from manager import budget as budgets
from manager.adoption import adopt_engines
from manager.config import Paths, Settings
from manager.config_remote import remote_entries
from manager.engine_starts import EngineStarts
from manager.engines.base import PlanRefused
from manager.engines.registry import EngineRegistry
from manager.engines.remote import REMOTE
from manager.index import IndexWriter
from manager.ipc import EventPublisher, endpoints, ensure_runtime_dir, make_socket, remove_endpoints
from manager.lag import LoopLag
from manager.live_config import CHECK_S, ConfigWatch, apply_live, read_live
from manager.memory import MemoryLedger
from manager.engine_marks import EngineMarks
from manager.metrics import ManagerMetrics
from manager.pulls import PullBoard
from manager.readings import engine_memory, rotate_engine_logs
from manager.protocol import (
    AbandonNotice, AcquireRequest, ErrorCode, ErrorReply, HardwareNotice, HeartbeatEvent, HelloRequest, ListModelsReply,
    ListModelsRequest, LoadRequest, ManagerStatus, ManagerStoppingEvent, PingReply, PingRequest, ReleaseNotice,
    Reply, SnapshotReply, SnapshotRequest, UnloadRequest, encoder, to_manager_decoder,
)
from manager.runner import (
    EngineFailed, EngineProgress, EngineReady, EngineRunner, EngineSpawned, EngineStopped, EngineTurned, RunnerConfig,
)
from manager.slots import Slot
from manager.effects import Learn, Mark, Plan, Publish, Send, Spawn, Stop, Turn
from manager.table import SlotTable

log = logging.getLogger("lmforge.manager")

HEARTBEAT_S = 1.0
TICK_S = 0.25
MEASURE_S = 1.0
ROTATE_S = 30.0  # how often engine logs are checked against log_max_mb
YIELD_EVERY = 64  # inbox items handled before the loop lets its other tasks run


@dataclass(frozen=True)
class Incoming:
    peer: bytes
    message: object


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Shutdown:
    reason: str
    crashed: bool = False  # leave the engines running for the next manager to adopt


@dataclass(frozen=True)
class Done:
    """Off-loop work finished; `then` runs on the loop with its result."""

    then: Callable[[], None]


class ManagerService:
    """See the module docstring. Handlers never await."""

    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings = settings
        self.paths = paths
        self.store = ModelStore(paths, remote_entries(settings.remote))  # [[remote]] models are found too
        self.engines = EngineRegistry(settings, paths)
        self.epoch = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        self.table = SlotTable(settings, self.epoch, engines=self.engines)
        self.ledger = MemoryLedger(paths.memory_ledger)
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.lag = LoopLag()
        self._crashed = False
        self.serving_since = 0.0
        self._measuring = False
        self._last_measure = self._last_rotate = self._last_config = 0.0
        self.config_watch = ConfigWatch(paths.config)
        self._ctx = zmq.asyncio.Context()
        self._router = make_socket(self._ctx, zmq.ROUTER)
        self._pub = make_socket(self._ctx, zmq.PUB)
        self.events = EventPublisher(self._pub)
        self.starts = EngineStarts(self.engines, paths, self.events.publish)
        self.session: aiohttp.ClientSession | None = None
        t = self.table
        self._handlers: dict[type, Callable[[bytes, object], None]] = {
            HelloRequest: t.hello,  # type: ignore[dict-item]
            AcquireRequest: self._on_acquire,  # type: ignore[dict-item]
            ReleaseNotice: t.release,  # type: ignore[dict-item]
            AbandonNotice: t.abandon,  # type: ignore[dict-item]
            LoadRequest: self._on_load,  # type: ignore[dict-item]
            UnloadRequest: self._on_unload,  # type: ignore[dict-item]
            SnapshotRequest: self._on_snapshot,  # type: ignore[dict-item]
            ListModelsRequest: self._on_list_models,  # type: ignore[dict-item]
            HardwareNotice: lambda peer, n: t.set_hardware(n.snapshot),  # type: ignore[attr-defined]
            PingRequest: lambda peer, r: self.send(peer, PingReply(req_id=r.req_id, epoch=self.epoch)),  # type: ignore[attr-defined]
        }
        self.index_writer = IndexWriter(self.store, t, self._offload, self.send)
        self._handlers.update(self.index_writer.handlers())  # import, copy, delete
        self.pulls = PullBoard(index=self.index_writer.index_pulled, home=paths.home, store=self.store,
                               budget=lambda: self.table.budget().total_bytes)  # a job's quant fits the budget
        self._handlers.update(self.pulls.handlers())  # pulls, and the downloader's jobs
        self.metrics, self.marks = ManagerMetrics.of(t, self.lag), EngineMarks(paths)
        self._handlers.update(self.metrics.handlers(self.send))  # the gateway's /metrics asks for these
        self._internal: dict[type, Callable[[object], None]] = {
            EngineSpawned: lambda e: t.spawned(e.key, e.generation, e.pid, e.port),  # type: ignore[attr-defined]
            EngineProgress: lambda e: t.progressed(e.key, e.generation, e.stage, e.progress, e.detail),  # type: ignore
            EngineReady: lambda e: t.ready(e.key, e.generation),  # type: ignore[attr-defined]
            EngineFailed: lambda e: t.failed(e.key, e.generation, e.message, e.severity, e.tail),  # type: ignore[attr-defined]
            EngineStopped: lambda e: t.stopped(e.key, e.generation),  # type: ignore[attr-defined]
            EngineTurned: lambda e: t.turned(e.key, e.generation, e.turn),  # type: ignore[attr-defined]
            Tick: lambda _: self._on_tick(),
            Done: lambda d: d.then(),  # type: ignore[attr-defined]
        }

    # --- running ---

    async def run(self) -> int:
        """Serve until SIGTERM (engines stopped, 0) or a crash of our own (engines left to adopt, exit 1)."""
        self.session = aiohttp.ClientSession()
        self._migrate_index()
        for slot, runner in await adopt_engines(self):
            self._run(slot, runner.run(adopted_port=slot.port))
        ensure_runtime_dir(self.paths.runtime)
        ends = endpoints(self.paths)
        self._pub.bind(ends.events)
        self.serving_since = time.time()
        self._router.bind(ends.control)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.post, Shutdown(sig.name))
        tasks = [loop.create_task(c) for c in (self._read(), self._beat(), self._tick(), self.lag.run())]
        for task in tasks:
            task.add_done_callback(self._background_died)
        log.info("manager %s (epoch %s) listening on %s", os.getpid(), self.epoch, ends.control)
        self._auto_load()
        try:
            await self._serve()
        finally:
            for task in tasks:
                task.cancel()
            if self._crashed:
                self._abandon()
            await self._shutdown()
        return 0

    def _migrate_index(self) -> None:
        """An index written by an earlier LMForge is rewritten in today's schema, once, before anything reads it."""
        try:
            if self.store.migrate():
                log.info("migrated %s to the current index schema (the old file is kept beside it)", self.paths.index)
        except StoreError as exc:
            log.error("cannot migrate the model index: %s", exc)

    async def _serve(self) -> None:
        handled = 0
        while True:
            item = await self.inbox.get()
            if isinstance(item, Shutdown):
                log.info("[shutdown] manager: %s", item.reason)
                self._crashed = item.crashed
                return
            self._dispatch(item)
            handled += 1
            if handled % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a full inbox never returns from get(): let the other tasks run

    def _dispatch(self, item: object) -> None:
        try:
            if isinstance(item, Incoming):
                self._handlers[type(item.message)](item.peer, item.message)
            else:
                self._internal[type(item)](item)
        except Exception:
            # A bug in one handler must not take the loop (and every engine) down with it.
            log.exception("manager loop failed handling %r", item)
            if isinstance(item, Incoming) and isinstance(getattr(item.message, "req_id", None), int):
                self.send(item.peer, ErrorReply(req_id=item.message.req_id, code=ErrorCode.INTERNAL,  # type: ignore[attr-defined]
                                                message="internal manager error; see the manager log"))
        self.act()

    def act(self) -> None:
        for effect in [*self.table.drain(), *self.pulls.out.take()]:
            if isinstance(effect, Send):
                self.send(effect.peer, effect.message)
            elif isinstance(effect, Publish):
                self.metrics.observe(self.events.publish(effect.event))
            elif isinstance(effect, Spawn):
                self._spawn(effect.slot)
            elif isinstance(effect, Stop):
                effect.slot.stop_event.set()
            elif isinstance(effect, Turn):
                effect.slot.turns.put_nowait(effect.turn)  # its runner parks or resumes the engine
            elif isinstance(effect, Plan):
                self._plan(effect.slot)
            elif isinstance(effect, Mark):
                self.marks.put(effect)
            elif isinstance(effect, Learn):
                self._offload(functools.partial(self.ledger.record, effect.model, effect.kind, effect.ctx_size,
                                                effect.bytes, basis=effect.basis), lambda _: None)

    def _background_died(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A deaf or silent manager looks alive to nobody's benefit: exit, and let
        # supervisord restart us; the engines keep serving and are adopted.
        log.critical("manager task %s died; exiting so that supervisord restarts the manager",
                     task.get_coro(), exc_info=task.exception())
        self.post(Shutdown("a background task died", crashed=True))

    async def _read(self) -> None:
        read = 0
        while True:
            frames = await self._router.recv_multipart()
            try:
                self._accept(frames)
            except Exception:  # whatever arrives, the reader goes on
                log.exception("refused a message that broke its decoding")
            read += 1
            if read % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a queued message is returned without suspending: let the loop run

    def _accept(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("refused a message of %d frames from %r", len(frames), frames[0][:64])
            return
        peer, data = frames
        try:
            message = to_manager_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("refused an undecodable message (%d bytes) from %r: %s", len(data), peer[:64], exc)
            self._refuse(peer, data, exc)
            return
        self.post(Incoming(peer, message))

    def _refuse(self, peer: bytes, data: bytes, exc: Exception) -> None:
        try:
            raw = msgspec.msgpack.decode(data)
        except msgspec.DecodeError:
            return
        if isinstance(raw, dict) and isinstance(raw.get("req_id"), int):
            self.send(peer, ErrorReply(req_id=raw["req_id"], code=ErrorCode.BAD_REQUEST,
                                       message=f"undecodable request: {exc}"))

    async def _beat(self) -> None:
        while True:
            self.events.publish(HeartbeatEvent(epoch=self.epoch, time=time.time(), serving_since=self.serving_since))
            await asyncio.sleep(HEARTBEAT_S)

    async def _tick(self) -> None:
        # Its own timer: expiry and deadlines run whatever the traffic.
        while True:
            await asyncio.sleep(TICK_S)
            self.post(Tick())

    def post(self, item: object) -> None:
        self.inbox.put_nowait(item)

    def send(self, peer: bytes | None, message: Reply) -> None:
        if peer is None:
            return
        try:
            self._router.send_multipart([peer, encoder.encode(message)], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("reply to %r dropped: peer queue full", peer)

    def _offload(self, work: Callable[[], object], then: Callable[[object], None]) -> None:
        """Run blocking `work` in a thread; `then(result or exception)` runs on the loop."""
        async def run() -> None:
            try:
                result: object = await asyncio.to_thread(work)
            except Exception as exc:
                result = exc
            self.post(Done(functools.partial(then, result)))
        asyncio.get_running_loop().create_task(run())

    # --- requests that may need the store, read off the loop ---

    def _with_entry(self, model: str, then: Callable[[object], None], peer: bytes | None, req_id: int) -> None:
        def answer(entry: object) -> None:
            if isinstance(entry, Exception):  # a store that cannot be read: say so, never leave it unanswered
                self.send(peer, ErrorReply(req_id=req_id, code=ErrorCode.INTERNAL,
                                           message=f"cannot read the model store: {entry}"))
            else:
                then(entry)
        self._offload(functools.partial(self.store.get, model), answer)

    def _on_acquire(self, peer: bytes, req: AcquireRequest) -> None:
        if self.table.live(req.model, req.kind) is not None or self.table.stopping:
            self.table.acquire(peer, req, None)
        else:
            self._with_entry(req.model, lambda e: self.table.acquire(peer, req, e), peer, req.req_id)  # type: ignore[arg-type]

    def _on_load(self, peer: bytes | None, req: LoadRequest) -> None:
        if self.table.live(req.model, req.kind) is not None or self.table.stopping:
            self.table.load(peer, req, None)
        else:
            self._with_entry(req.model, lambda e: self.table.load(peer, req, e), peer, req.req_id)  # type: ignore[arg-type]

    def _on_unload(self, peer: bytes, req: UnloadRequest) -> None:
        if req.model is None or any(s.model == req.model for s in self.table.slots.values()):
            self.table.unload_request(peer, req, installed=True)
        else:
            self._with_entry(req.model, lambda e: self.table.unload_request(peer, req, e is not None), peer, req.req_id)

    def _on_snapshot(self, peer: bytes, req: SnapshotRequest) -> None:
        t = self.table
        status = ManagerStatus(
            epoch=self.epoch, started_at=self.started_at,
            slots=tuple(s.info() for s in [*t.slots.values(), *t.retiring.values()]),
            budget=t.budget(), last_errors=dict(t.failures.last_errors), peers=t.peers.all(),
            hardware=t.hardware, loop_lag_max_ms=round(self.lag.worst_ms(), 1), pulls=self.pulls.infos(),
            cpu=t.cpu_status(),
        )
        self.send(peer, SnapshotReply(req_id=req.req_id, seq=self.events.seq, status=status))

    def _on_list_models(self, peer: bytes, req: ListModelsRequest) -> None:
        def answer(models: object) -> None:
            if isinstance(models, Exception):
                self.send(peer, ErrorReply(req_id=req.req_id, code=ErrorCode.INTERNAL, message=str(models)))
            else:
                self.send(peer, ListModelsReply(req_id=req.req_id, models=tuple(models)))  # type: ignore[arg-type]
        self._offload(self.store.list, answer)

    def _auto_load(self) -> None:
        for i, name in enumerate(self.settings.auto_load):
            self._on_load(None, LoadRequest(req_id=-(i + 1), model=name, pin=True))

    # --- ticks: expiry, memory readings ---

    def _on_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_measure >= MEASURE_S and not self._measuring:
            self._last_measure, self._measuring = now, True
            holders = [s for s in self.table.memory_holders() if s.pid is not None]
            on_gpu = budgets.is_gpu_host(self.table.hardware)
            plans = {s.pid: s.estimate for s in holders}  # how a container's VRAM estimate is shared out
            self._offload(functools.partial(engine_memory, list(plans), on_gpu, plans), self._measured)
        if now - self._last_config >= CHECK_S:
            self._last_config = now
            if self.config_watch.changed():
                self._offload(functools.partial(read_live, self.paths.home), self._config_read)
        if now - self._last_rotate >= ROTATE_S:
            self._last_rotate = now
            self._offload(functools.partial(rotate_engine_logs, self.paths.logs, self.settings), lambda _: None)
        self.table.tick()
        self.pulls.tick()

    def _config_read(self, read: object) -> None:
        """config.toml changed: its live keys (live_config.py) apply now; an invalid file changes nothing."""
        if isinstance(read, Exception):
            log.warning("config.toml changed but cannot be used, nothing applied: %s", read)
            return
        self.settings, changes = apply_live(self.settings, read)  # type: ignore[arg-type]
        if changes:
            log.info("config.toml changed; applied now: %s", "; ".join(changes))
            self.table.settings = self.settings
            self.table.schedule()

    def _measured(self, readings: object) -> None:
        self._measuring = False
        if isinstance(readings, Exception):
            log.warning("reading engine memory failed: %s", readings)
            return
        self.table.measured(readings)  # type: ignore[arg-type]

    # --- engines ---

    def _plan(self, slot: Slot) -> None:
        vram = self.table.budget().total_bytes if budgets.is_gpu_host(self.table.hardware) else 0
        hardware = self.table.hardware  # read on the loop, not in the thread

        def read() -> tuple[object, int | None]:
            plan = self.starts.plan(slot, hardware, vram)
            return plan, self.ledger.learned(slot.model, slot.kind, plan.ctx_size, basis=plan.total)

        def then(result: object) -> None:
            if isinstance(result, Exception):  # any exception: that slot fails, every other goes on
                why = str(result) or type(result).__name__
                why = why if isinstance(result, PlanRefused) else f"cannot read the model file: {why}"
                self.table.planned(slot.key, slot.generation, None, None, why)
            else:
                plan, learned = result  # type: ignore[misc]
                self.table.planned(slot.key, slot.generation, plan, learned)
        self._offload(read, then)

    def runner_config(self, slot: Slot) -> RunnerConfig:
        return self.starts.runner_config(slot, self.settings)

    def _spawn(self, slot: Slot) -> None:
        assert self.session is not None
        if slot.engine == REMOTE:  # nothing to start: watch the engine that runs elsewhere
            self._run(slot, self.starts.remote_runner(slot, self.runner_config(slot), self.session, self.post).run())
            return
        command = functools.partial(self.starts.launch, slot, hardware=lambda: self.table.hardware)
        runner = EngineRunner(slot.key, slot.generation, command, self.runner_config(slot), self.session,
                              slot.stop_event, self.post, slot.turns)
        self._run(slot, runner.run())

    def _run(self, slot: Slot, coro: object) -> None:
        slot.task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]

    # --- shutdown ---

    def _abandon(self) -> None:
        """Exit now as a crash would, leaving the engines serving for the next manager to adopt."""
        log.critical("[shutdown] manager: exiting with %d engine(s) left running for the next manager",
                     len(self.table.slots) + len(self.table.retiring))
        logging.shutdown()
        os._exit(1)  # no cleanup: asyncio's would cancel the runners, and they stop their engines

    async def _shutdown(self) -> None:
        log.info("[shutdown] manager: stopping %d engine(s)", len(self.table.slots) + len(self.table.retiring))
        self.events.publish(ManagerStoppingEvent(epoch=self.epoch))
        self.table.shutdown()
        self.act()
        runners = [s.task for s in self.table.retiring.values() if s.task is not None]
        if runners:
            await asyncio.wait(runners, timeout=self.settings.stop_grace_s + 2.0)
        for task in runners:
            task.cancel()
        if self.session is not None:
            await self.session.close()
        self._pub.setsockopt(zmq.LINGER, 200)  # let the stopping event out
        self.close()
        remove_endpoints(self.paths)
        log.info("[shutdown] manager: done")

    def close(self) -> None:
        """Close the sockets and their context (the last step of every shutdown)."""
        self._router.close()
        self._pub.close()
        self._ctx.term()
