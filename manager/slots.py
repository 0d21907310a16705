"""Slot: one (model, kind) engine as the manager's table holds it, and its legal transitions."""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass, field

from manager import memory
from manager.context import outgrown, reload_reason
from manager.config_remote import REMOTE_FORMAT
from manager.engines.base import MemoryPlan
from manager.protocol import (
    AcquireRequest,
    LoadProgressEvent,
    LoadRequest,
    ModelEntry,
    SlotInfo,
    SlotKind,
    SlotState,
)
from manager.scheduler import Resident

SlotKey = tuple[str, SlotKind]

_ALLOWED: dict[SlotState, set[SlotState]] = {
    SlotState.PENDING: {SlotState.LOADING, SlotState.FAILED},
    SlotState.LOADING: {SlotState.READY, SlotState.FAILED, SlotState.STOPPING},
    SlotState.READY: {SlotState.STOPPING, SlotState.FAILED, SlotState.PARKING},
    SlotState.PARKING: {SlotState.PARKED, SlotState.STOPPING, SlotState.FAILED},
    SlotState.PARKED: {SlotState.RESUMING, SlotState.STOPPING, SlotState.FAILED},
    SlotState.RESUMING: {SlotState.READY, SlotState.STOPPING, SlotState.FAILED},
    SlotState.STOPPING: {SlotState.UNLOADED, SlotState.FAILED},
    SlotState.UNLOADED: set(),
    SlotState.FAILED: set(),
}
DEFAULT_KEEP = "default"  # keep_alive not given: the slot's own default applies
HOT_S = 0.5  # a contended slot idle for less than this is between two requests of steady traffic
# States in which a slot holds memory (or is about to).
HOLDS_MEMORY = {SlotState.LOADING, SlotState.READY, SlotState.STOPPING, SlotState.PARKING, SlotState.RESUMING}


class IllegalTransition(RuntimeError):
    """A bug: the loop tried to move a slot along an arrow that does not exist."""


@dataclass
class Waiter:
    """A request parked on a slot: a load until the slot is ready, an acquire until it gets a lease."""

    peer: bytes | None  # None: the manager's own request (auto_load)
    request: AcquireRequest | LoadRequest
    keep_alive: float | None | str  # parsed; "default" means the model's own
    since: float  # monotonic, from the table's clock
    ticket: int  # the table's arrival order, across every slot: a freed permit goes to the lowest
    load_s: float = 0.0  # how long of its wait was for the engine to load (set when it is ready)

    @property
    def acquires(self) -> bool:
        return isinstance(self.request, AcquireRequest)


@dataclass
class Slot:
    """Mutable; changed only by the manager's loop."""

    entry: ModelEntry
    kind: SlotKind
    generation: int
    engine: str
    keep_alive_s: float | None  # the model's default after each request
    engine_reason: str = ""  # why this engine serves it (prober/engine_choice.py)
    fallbacks: tuple[str, ...] = ()  # the engines to try, in order, if this one fails to install or load it
    failed_engines: tuple[str, ...] = ()  # the engines that failed it before this one, in order
    parallel: int = 1  # requests its engine serves at once: the leases it grants before queueing
    pinned: bool = False
    state: SlotState = SlotState.PENDING
    plan: MemoryPlan | None = None
    planning: bool = False  # the header is being read off the loop
    num_ctx: int = 0  # the largest context its requests asked for before it started; 0: the default
    load_reason: str = ""  # why it was loaded: shown in /lf/status
    grew_from: int = 0  # the context of the engine it replaces because a request asked for more
    on_gpu: bool = False  # measured and charged in VRAM
    port: int | None = None
    pid: int | None = None
    inflight: int = 0
    # Ollama semantics: the keep_alive of the latest request, applied when the last one ends.
    next_keep: float | None | str = DEFAULT_KEEP
    last_used_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    loaded_at: float | None = None
    load_started: float = field(default_factory=time.monotonic)
    wait_deadline: float | None = None  # monotonic; set while a pending slot waits
    busy_wait_since: float | None = None  # monotonic; while it waits for busy models' memory
    learned_bytes: int | None = None  # what the last load of this (model, kind, ctx) came to
    measured_bytes: int | None = None
    private_bytes: int | None = None
    memory_estimate: str = ""  # how measured_bytes was estimated when NVML could not read it per process
    at_ready_bytes: int | None = None  # the first measurement after ready, before any request
    waiters: list[Waiter] = field(default_factory=list)  # loads waiting for it to be ready
    queue: deque[Waiter] = field(default_factory=deque)  # acquires waiting for a lease, oldest first: queues.py
    hold_s: float | None = None  # how long its leases are held, recent ones weighing more; None: none returned yet
    detail: str = ""
    # An explicit unload waiting for requests in flight: no new leases, then stop.
    draining: str | None = None
    # Giving a waiting load its turn: in-flight requests finish, new ones queue.
    yielding_to: str | None = None
    contended: bool = False  # a load waited for it while it was busy: it has traffic of its own
    # Cores (cores.py): the threads its engine runs (0: not budgeted), since when it holds them (its first lease
    # while none was in flight), since when its queue waits for them, and whom it makes room for.
    threads: int = 0
    computing_since: float | None = None
    cores_wait_since: float | None = None
    cores_yield: str | None = None
    keep_until: float | None = None  # restarted for its threads: its predecessor's expiry, until its next request
    load_stage: str = ""  # while loading: how far its engine has got (manager/load_watch.py), and the share
    load_progress: float | None = None  # of its weights in memory while it loads them
    adopted: bool = False
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    turns: asyncio.Queue[str] = field(default_factory=asyncio.Queue)  # "park" or "resume", for its runner
    task: asyncio.Task[None] | None = None

    @property
    def model(self) -> str:
        return self.entry.name

    @property
    def key(self) -> SlotKey:
        return (self.entry.name, self.kind)

    @property
    def label(self) -> str:
        return label(self.entry.name, self.kind)

    @property
    def file_slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.entry.name}-{self.kind}")

    @property
    def local(self) -> bool:
        """Whether its engine runs here (memory and cores); a `[[remote]]` model's runs elsewhere."""
        return self.entry.format != REMOTE_FORMAT

    @property
    def base_url(self) -> str:
        if not self.local:
            return self.entry.path  # served elsewhere: manager/engines/remote.py
        return f"http://127.0.0.1:{self.port}"

    @property
    def idle(self) -> bool:
        """Nothing in flight, queued or waiting for its load: only then may its keep_alive run out."""
        return not (self.inflight or self.queue or self.waiters)

    @property
    def estimate(self) -> int:
        """Before a load: what the last load of the same model, kind and context came to, else the header's figure."""
        if self.plan is None:
            return 0
        return self.learned_bytes or self.plan.total

    @property
    def charged(self) -> int:
        """What the budget counts: the estimate until measured, then the measurement plus what is still to grow."""
        if self.plan is None:
            return 0
        growth = memory.growth_after_ready(self.plan, on_gpu=self.on_gpu)
        return memory.charge(self.estimate, self.measured_bytes, self.at_ready_bytes, growth)

    @property
    def reserved(self) -> int:
        """Bytes the budget counts for this slot now (nothing unless it holds memory)."""
        return self.charged if self.state in HOLDS_MEMORY else 0

    def refresh_expiry(self, now: float) -> None:
        """Ollama semantics: the clock starts when the last request ends, with the latest request's keep_alive."""
        seconds = self.keep_alive_s if self.next_keep == DEFAULT_KEEP else self.next_keep
        if not self.idle or self.pinned or seconds is None:
            self.expires_at = None
        elif self.keep_until is not None:
            self.expires_at = self.keep_until  # a restart does not lengthen the keep_alive its predecessor had
        else:
            self.expires_at = now + float(seconds)  # type: ignore[arg-type]

    def park(self, *waiters: Waiter) -> None:
        """A load waits for the slot to be ready; an acquire joins the end of its queue."""
        for w in waiters:
            (self.queue if w.acquires else self.waiters).append(w)

    def take_waiters(self) -> list[Waiter]:
        """Every request parked on it, loads first, each list in arrival order; the slot keeps none."""
        waiters = [*self.waiters, *self.queue]
        self.waiters, self.queue = [], deque()
        return waiters

    def loaded(self, mono: float) -> list[Waiter]:
        """It is ready: each waiter's wait for the load ends; the load waiters leave (returned), its queue stays."""
        for w in (*self.waiters, *self.queue):
            w.load_s = mono - w.since
        loads, self.waiters = self.waiters, []
        return loads

    def expired(self, now: float) -> bool:
        """Whether its keep_alive ran out (refresh_expiry sets none while anything keeps it loaded)."""
        return self.expires_at is not None and self.expires_at <= now

    def waits(self, reason: str, mono: float, timeout_s: float) -> bool | None:
        """Note that this pending slot still waits, now for `reason`: whether the reason changed, or None once it has
        waited `timeout_s` in all."""
        if self.wait_deadline is None:
            self.wait_deadline = mono + timeout_s
        elif mono >= self.wait_deadline:
            return None
        changed, self.detail = self.detail != reason, reason
        return changed

    def between_requests(self, now: float) -> bool:
        """A contended slot idle for a moment between two requests of steady traffic: not idle enough to evict.

        A slot that another load has waited on while it was busy has traffic of its
        own; evicting it in the milliseconds between two of its requests would swap
        the models on every request. It goes when its traffic pauses for HOT_S, or
        when its fair share is over and it yields.
        """
        gap = now - self.last_used_at
        return self.contended and not self.yielding_to and self.state == SlotState.READY and gap < HOT_S

    def resident(self, now: float) -> Resident:
        """How the admission policy sees it: a slot between two requests of steady traffic counts as busy, and
        so does one with requests queued for it (unless it yields: then they wait for its next load)."""
        busy = bool(self.inflight or self.between_requests(now) or (self.queue and not self.yielding_to))
        return Resident((self.key, self.generation), self.state, self.reserved, busy, self.last_used_at, self.pinned)

    def waited_its_share(self, busy: tuple[object, ...], mono: float, fair_share_s: float) -> bool:
        """Whether this pending slot has waited `fair_share_s` for busy slots' memory, so they must yield to it."""
        if not busy or self.state not in (SlotState.PENDING, SlotState.PARKED):  # refused by now: nobody to yield to
            self.busy_wait_since = None
        elif self.busy_wait_since is None:
            self.busy_wait_since = mono
        return self.busy_wait_since is not None and mono - self.busy_wait_since >= fair_share_s

    def yield_to(self, load: str | None, loads_wait: bool) -> bool:
        """Yield to a starved `load` (None: to none); whether that changed. Its queue is served again once not."""
        if not loads_wait:
            self.contended = False  # nobody waits for its memory any more
        if load and self.yielding_to != load:
            self.yielding_to, self.detail = load, f"finishing its requests so that {load} can load"
            return True
        if not load and self.yielding_to:
            self.yielding_to, self.detail = None, ""
            return True
        return False

    def ask_context(self, asked: int) -> int | None:
        """The larger context a new engine needs to serve an ask for `asked` tokens; None when this slot serves it.

        A pending slot always serves it: it raises the context it will load with, and a
        plan already read for a smaller one is dropped, to be read again.
        """
        needed = outgrown(self.plan, asked) if self.plan is not None else None
        if self.state != SlotState.PENDING:
            return needed
        self.num_ctx = max(self.num_ctx, asked)
        if needed is not None:
            self.plan = self.learned_bytes = None
        return None

    def progressed(self, stage: str, progress: float | None, detail: str) -> LoadProgressEvent | None:
        """Its loading engine moved on, as its runner saw: the event to publish; None unless it is loading."""
        if self.state != SlotState.LOADING:
            return None
        self.load_stage, self.load_progress = stage, progress
        return self.load_event(stage, progress, detail)

    def load_event(self, stage: str, progress: float | None = None, detail: str = "") -> LoadProgressEvent:
        return LoadProgressEvent(model=self.model, kind=self.kind, stage=stage, detail=detail, progress=progress)

    def _waiting(self) -> str:
        """A pending slot's load stage: "waiting" once it waits for something (its detail says what)."""
        return "waiting" if self.state == SlotState.PENDING and self.detail else ""

    def change_state(self, new: SlotState) -> SlotState:
        old = self.state
        if new not in _ALLOWED[old]:
            raise IllegalTransition(f"{self.label}: {old} -> {new} is not a slot transition")
        self.state = new
        return old

    def info(self) -> SlotInfo:
        plan = self.plan
        return SlotInfo(
            model=self.model,
            kind=self.kind,
            state=self.state,
            engine=self.engine,
            engine_reason=self.engine_reason,
            generation=self.generation,
            port=self.port,
            pid=self.pid,
            inflight=self.inflight,
            pinned=self.pinned,
            keep_alive_s=self.keep_alive_s,
            expires_at=self.expires_at,
            last_used_at=self.last_used_at,
            loaded_at=self.loaded_at,
            estimate_bytes=self.estimate,
            measured_bytes=self.measured_bytes,
            memory_estimate=self.memory_estimate,
            charged_bytes=self.charged,
            adopted=self.adopted,
            ctx_size=plan.ctx_size if plan else 0,
            gpu_layers=plan.gpu_layers if plan else 0,
            waiting=len(self.queue),
            parallel=self.parallel,
            detail=self.detail,
            # Larger asks may have come while it waited: the reason names the context it got.
            load_reason=reload_reason(self.grew_from, plan.ctx_size) if self.grew_from and plan else self.load_reason,
            threads=self.threads,
            computing=self.state == SlotState.READY and self.inflight > 0 and self.threads > 0,
            yields_cores_to=self.cores_yield or "",
            load_stage=self.load_stage if self.state == SlotState.LOADING else self._waiting(),
            load_progress=self.load_progress if self.state == SlotState.LOADING else None,
        )


def label(model: str, kind: SlotKind) -> str:
    """How a slot is named to people: the model, plus its kind unless it is chat."""
    return model if kind == SlotKind.CHAT else f"{model} ({kind})"
