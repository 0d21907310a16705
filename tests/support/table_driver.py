"""A stand-in for the manager service around a SlotTable: scripted runner reports, a hand-moved clock.

It answers the table's effects as the service would, without processes: a Plan with a
memory plan (the context it starts with follows the slot's num_ctx, as the llama.cpp
adapter's does), a Spawn or Stop by noting it, a Send by keeping the reply, a Publish
of a queue's change by keeping the event.
"""

from __future__ import annotations

from manager.config import Settings
from manager.context import start_ctx
from manager.effects import Clock, Learn, Plan, Publish, Send, Spawn, Stop, Turn
from manager.engines.base import Engines, MemoryPlan
from manager.protocol import (
    AbandonNotice, AcquireReply, AcquireRequest, ErrorReply, HeldLease, HelloRequest, LeaseOutcome, LoadProgressEvent,
    LoadRequest, ModelEntry, PeerRole, QueueEvent, ReleaseNotice, SlotKind, SlotState, UnloadRequest,
)
from manager.slots import Slot
from manager.table import SlotTable

MiB = 1024**2
DEFAULT_CTX = 2048  # the context a load gets when nothing larger is asked
CHAT = SlotKind.CHAT
GATEWAY = b"gateway-1"


class FakeClock(Clock):
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def mono(self) -> float:
        return self.t


class Driver:
    """Plays the service: answers Plan effects with a plan, keeps replies by request id, and reports for runners."""

    def __init__(self, budget_mb: int = 1000, parallel: int = 4, engines: Engines | None = None,
                 **settings: object) -> None:
        """`parallel`: requests one engine serves at once (llama.cpp's default); `engines`: which engine serves a
        model (llama.cpp alone unless given). Unless the test sets cpu_*
        settings, cores are plenty (64 engines at once, a thread each): tests of memory and queues are not
        about cores (tests/unit/manager/test_cores.py is)."""
        self.clock = FakeClock()
        if not any(name.startswith("cpu_") for name in settings):
            settings.update(cpu_policy="shared", cpu_cores=64, cpu_shared_engines=64)
        config = Settings(memory_budget_mb=budget_mb, **settings)  # type: ignore[arg-type]
        self.table = SlotTable(config, "ep0", engines=engines, parallel=parallel, clock=self.clock)
        self.sizes: dict[str, int] = {}
        self.replies: dict[int, object] = {}
        self.spawned: list[tuple[str, int]] = []
        self.stopped: list[tuple[str, int]] = []
        self.turns: list[tuple[str, int, str]] = []  # (model, generation, "park" or "resume")
        self.learned: list[Learn] = []
        self.queue_events: list[QueueEvent] = []
        self.load_events: list[LoadProgressEvent] = []
        self.plan_errors: dict[str, Exception] = {}
        self.trained: dict[str, int] = {}  # a model's trained context; unknown (0) unless set
        self._ids = iter(range(1, 10_000))
        self.hello(GATEWAY)

    def plan_for(self, slot: Slot) -> MemoryPlan:
        """The model's size in weights; its context as the adapter chooses it, capped by `trained`."""
        trained = self.trained.get(slot.model, 0)
        ctx = start_ctx(DEFAULT_CTX, slot.num_ctx, trained)
        weights = self.sizes[slot.model] * MiB
        return MemoryPlan(weights=weights, kv_cache=0, compute=0, ctx_size=ctx, ctx_max=trained)

    def entry(self, model: str, size_mb: int = 100) -> ModelEntry:
        self.sizes.setdefault(model, size_mb)
        return ModelEntry(name=model, path=f"/models/{model}.gguf", kinds=(CHAT, SlotKind.EMBED))

    def settle(self) -> None:
        for _ in range(100):
            effects = self.table.drain()
            if not effects:
                return
            for e in effects:
                if isinstance(e, Send) and e.peer is not None:
                    self.replies[e.message.req_id] = e.message
                elif isinstance(e, Plan):
                    model = e.slot.model
                    if model in self.plan_errors:
                        self.table.planned(e.slot.key, e.slot.generation, None, None, str(self.plan_errors[model]))
                    else:
                        self.table.planned(e.slot.key, e.slot.generation, self.plan_for(e.slot), None)
                elif isinstance(e, Spawn):
                    self.spawned.append((e.slot.model, e.slot.generation))
                elif isinstance(e, Stop):
                    self.stopped.append((e.slot.model, e.slot.generation))
                elif isinstance(e, Turn):
                    self.turns.append((e.slot.model, e.slot.generation, e.turn))
                elif isinstance(e, Learn):
                    self.learned.append(e)
                elif isinstance(e, Publish) and isinstance(e.event, QueueEvent):
                    self.queue_events.append(e.event)
                elif isinstance(e, Publish) and isinstance(e.event, LoadProgressEvent):
                    self.load_events.append(e.event)
        raise AssertionError("effects never settled")

    # --- messages in ---

    def hello(self, peer: bytes, leases: tuple[HeldLease, ...] = (), role: PeerRole = PeerRole.GATEWAY) -> None:
        self.table.hello(peer, HelloRequest(req_id=next(self._ids), role=role, pid=1, leases=leases))
        self.settle()

    def acquire(self, model: str, keep_alive: str | float | None = None, peer: bytes = GATEWAY,
                size_mb: int = 100, num_ctx: int = 0, trace_id: str = "") -> int:
        req = AcquireRequest(req_id=next(self._ids), model=model, kind=CHAT, keep_alive=keep_alive, num_ctx=num_ctx,
                             trace_id=trace_id)
        entry = None if self.table.live(model, CHAT) else self.entry(model, size_mb)
        self.table.acquire(peer, req, entry)
        self.settle()
        return req.req_id

    def load(self, model: str, **fields: object) -> int:
        req = LoadRequest(req_id=next(self._ids), model=model, **fields)  # type: ignore[arg-type]
        self.table.load(GATEWAY, req, None if self.table.live(model, CHAT) else self.entry(model))
        self.settle()
        return req.req_id

    def abandon(self, req_id: int, peer: bytes = GATEWAY) -> None:
        self.table.abandon(peer, AbandonNotice(req_id=req_id))
        self.settle()

    def release(self, lease_id: str, outcome: LeaseOutcome = LeaseOutcome.OK, peer: bytes = GATEWAY) -> None:
        self.table.release(peer, ReleaseNotice(lease_id=lease_id, outcome=outcome))
        self.settle()

    def unload(self, model: str | None) -> int:
        req = UnloadRequest(req_id=next(self._ids), model=model)
        self.table.unload_request(GATEWAY, req, installed=True)
        self.settle()
        return req.req_id

    # --- runner reports ---

    def ready(self, model: str) -> None:
        slot = self.table.slots[(model, CHAT)]
        self.table.spawned(slot.key, slot.generation, pid=1000 + slot.generation, port=20000 + slot.generation)
        self.table.ready(slot.key, slot.generation)
        self.settle()

    def advance(self, seconds: float) -> None:
        """Time passes: the manager's periodic tick sees it."""
        self.clock.t += seconds
        self.table.tick()
        self.settle()

    def stopped_engine(self, model: str, generation: int) -> None:
        self.table.stopped((model, CHAT), generation)
        self.settle()

    # --- reading ---

    def lease(self, req_id: int) -> AcquireReply:
        reply = self.replies[req_id]
        assert isinstance(reply, AcquireReply), reply
        return reply

    def error(self, req_id: int) -> ErrorReply:
        reply = self.replies[req_id]
        assert isinstance(reply, ErrorReply), reply
        return reply

    def state(self, model: str) -> SlotState | None:
        slot = self.table.slots.get((model, CHAT))
        return slot.state if slot else None

    def inflight(self, model: str) -> int:
        return sum(s.inflight for s in [*self.table.slots.values(), *self.table.retiring.values()] if s.model == model)

    def warm(self, model: str, size_mb: int = 100) -> AcquireReply:
        """A ready model with one lease held."""
        rid = self.acquire(model, size_mb=size_mb)
        self.ready(model)
        return self.lease(rid)
