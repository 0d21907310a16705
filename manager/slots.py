"""Slot: one (model, kind) engine as the manager's table holds it, and its legal transitions."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

from manager.engines.base import MemoryPlan
from manager.protocol import (
    AcquireRequest,
    LoadRequest,
    ModelEntry,
    SlotInfo,
    SlotKind,
    SlotState,
)

SlotKey = tuple[str, SlotKind]

_ALLOWED: dict[SlotState, set[SlotState]] = {
    SlotState.PENDING: {SlotState.LOADING, SlotState.FAILED},
    SlotState.LOADING: {SlotState.READY, SlotState.FAILED, SlotState.STOPPING},
    SlotState.READY: {SlotState.STOPPING, SlotState.FAILED},
    SlotState.STOPPING: {SlotState.UNLOADED, SlotState.FAILED},
    SlotState.UNLOADED: set(),
    SlotState.FAILED: set(),
}
# States in which a slot holds memory (or is about to).
HOLDS_MEMORY = {SlotState.LOADING, SlotState.READY, SlotState.STOPPING}


class IllegalTransition(RuntimeError):
    """A bug: the loop tried to move a slot along an arrow that does not exist."""


@dataclass
class Waiter:
    """A request parked on a slot until it is ready or failed."""

    peer: bytes | None  # None: the manager's own request (auto_load)
    request: AcquireRequest | LoadRequest
    keep_alive: float | None | str  # parsed; "default" means the model's own
    since: float = field(default_factory=time.monotonic)


@dataclass
class Slot:
    """Mutable; changed only by the manager's loop."""

    entry: ModelEntry
    kind: SlotKind
    generation: int
    engine: str
    keep_alive_s: float | None  # the model's default after each request
    pinned: bool = False
    state: SlotState = SlotState.PENDING
    plan: MemoryPlan | None = None
    port: int | None = None
    pid: int | None = None
    inflight: int = 0
    last_used_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    loaded_at: float | None = None
    load_started: float = field(default_factory=time.monotonic)
    wait_deadline: float | None = None  # monotonic; set while a pending slot waits
    actual_bytes: int | None = None
    private_bytes: int | None = None
    waiters: list[Waiter] = field(default_factory=list)
    detail: str = ""
    unload_when_idle: str | None = None  # why, when an unload waits for requests in flight
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
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
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def reserved(self) -> int:
        """Bytes the budget counts for this slot: the estimate, or more if it grew past it."""
        if self.state not in HOLDS_MEMORY or self.plan is None:
            return 0
        return max(self.plan.total, self.actual_bytes or 0)

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
            generation=self.generation,
            port=self.port,
            pid=self.pid,
            inflight=self.inflight,
            pinned=self.pinned,
            keep_alive_s=self.keep_alive_s,
            expires_at=self.expires_at,
            last_used_at=self.last_used_at,
            loaded_at=self.loaded_at,
            estimate_bytes=plan.total if plan else 0,
            actual_bytes=self.actual_bytes,
            ctx_size=plan.ctx_size if plan else 0,
            gpu_layers=plan.gpu_layers if plan else 0,
            waiting=len(self.waiters),
            detail=self.detail,
        )


def label(model: str, kind: SlotKind) -> str:
    """How a slot is named to people: the model, plus its kind unless it is chat."""
    return model if kind == SlotKind.CHAT else f"{model} ({kind})"
