"""SlotLifecycle: how slots move through their states, as the manager loop drives them.

Admission and eviction (through the pure scheduler), loading via EngineRunner,
keep-alive expiry, crash records with backoff, and the events each step publishes.
Mixed into ManagerService; every method runs on the manager loop and never awaits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from catalog.gguf_info import GGUFError
from catalog.store import StoreError
from manager.budget import is_gpu_host
from manager.engines import llamacpp_build
from manager.engines.base import EngineMissing
from manager.keepalive import parse_keep_alive
from manager.leases import DEFAULT
from manager.protocol import (
    AcquireReply,
    AcquireRequest,
    BudgetInfo,
    ErrorCode,
    ErrorEvent,
    ErrorReply,
    LoadError,
    LoadProgressEvent,
    LoadReply,
    LoadRequest,
    Severity,
    SlotEvent,
    SlotState,
)
from manager.runner import (
    EngineFailed,
    EngineReady,
    EngineRunner,
    EngineSpawned,
    EngineStopped,
    LoadFailure,
    RunnerConfig,
)
from manager.scheduler import Admit, Evict, Reject, Resident, Wait, fmt_bytes, plan_admission
from manager.slots import Slot, SlotKey, Waiter

log = logging.getLogger("lmforge.manager")

FAILURE_WINDOW_S = 300.0  # failures further apart than this start a new count
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0  # a slot ready this long clears its failure count
MAX_ERRORS = 16


@dataclass
class Failures:
    count: int
    last_at: float  # monotonic
    message: str = ""


class SlotLifecycle:
    """See the module docstring. Expects ManagerService's attributes."""

    def __init__(self) -> None:
        self.last_errors: dict[str, LoadError] = {}
        self.failures: dict[SlotKey, Failures] = {}
        self._binary: asyncio.Future[Path] | None = None
        self._default_keep_alive = parse_keep_alive(self.settings.keep_alive)

    # --- finding or creating the slot for a request ---

    def _slot_for(self, peer: bytes | None, req: AcquireRequest | LoadRequest) -> Slot | None:
        """The live slot for (model, kind), created pending if absent; None after an error reply."""
        def refuse(code: ErrorCode, message: str, retry: float | None = None) -> None:
            self.reply(peer, ErrorReply(req_id=req.req_id, code=code, message=message, retry_after_s=retry))

        if self.stopping:
            return refuse(ErrorCode.SHUTTING_DOWN, "LMForge is shutting down")
        slot = self.slots.get((req.model, req.kind))
        if slot is not None:
            return slot
        try:
            entry = self.store.get(req.model)
        except StoreError as exc:
            return refuse(ErrorCode.INTERNAL, str(exc))
        if entry is None:
            return refuse(ErrorCode.MODEL_NOT_FOUND, f"model {req.model!r} is not installed; "
                          "`lmforge list` shows what is, `lmforge import FILE.gguf --name NAME` adds one")
        if req.kind not in entry.kinds or not self.adapter.supports(entry):
            can = ", ".join(entry.kinds) or "nothing"
            return refuse(ErrorCode.NOT_SUPPORTED, f"model {req.model!r} cannot serve {req.kind}; it serves: {can}")
        left = self._backoff_left((req.model, req.kind))
        if left > 0:
            rec = self.failures[(req.model, req.kind)]
            return refuse(ErrorCode.BACKING_OFF, f"{req.model} failed {rec.count} times in a row "
                          f"(last: {rec.message}); next attempt allowed in {left:.0f}s", retry=left)
        self._generations += 1
        slot = Slot(entry=entry, kind=req.kind, generation=self._generations, engine=self.adapter.name,
                    keep_alive_s=self._default_keep_alive)
        self.slots[slot.key] = slot
        self.publish_slot(slot, None)
        return slot

    # --- admission ---

    def schedule(self) -> None:
        """Give each pending slot, oldest first, what the policy says: load, evict, wait or refuse."""
        pending = sorted((s for s in self.slots.values() if s.state == SlotState.PENDING),
                         key=lambda s: s.load_started)
        for slot in pending:
            if self.slots.get(slot.key) is not slot or slot.state != SlotState.PENDING:
                continue  # an earlier decision in this pass refused or replaced it
            budget = self.budget()
            if budget.source == "unknown":
                self._wait(slot, "waiting for the hardware prober's first snapshot")
                continue
            if slot.plan is None and not self._plan(slot, budget):
                continue
            self._admit(slot, budget)

    def _admit(self, slot: Slot, budget: BudgetInfo) -> None:
        assert slot.plan is not None
        for _ in range(2):  # after evicting, ask again: a count limit may now allow the load
            residents = [Resident((s.key, s.generation), s.state, s.reserved, s.inflight, s.last_used_at, s.pinned)
                         for s in self.memory_holders()]
            decision = plan_admission(slot.plan.total, budget.total_bytes, residents,
                                      self.settings.max_loaded_models)
            if isinstance(decision, Admit):
                self._start(slot)
                return
            if not isinstance(decision, Evict):
                break
            victims = [v for v in self.memory_holders() if (v.key, v.generation) in decision.victims]
            for victim in victims:
                self.unload(victim, f"evicted to make room for {slot.label}")
            decision = Wait(f"evicting {', '.join(v.label for v in victims)}")
        if isinstance(decision, Wait):
            self._wait(slot, decision.reason)
        elif isinstance(decision, Reject):
            self._refuse_pending(slot, f"cannot load {slot.label}: {decision.reason}")

    def _plan(self, slot: Slot, budget: BudgetInfo) -> bool:
        vram = budget.total_bytes if is_gpu_host(self.hardware) else 0
        try:
            slot.plan = self.adapter.plan(slot.entry, slot.kind, self.hardware, vram)
            return True
        except (GGUFError, OSError) as exc:
            self._fail(slot, f"cannot read the model file: {exc}", Severity.USER_ERROR, "")
            return False

    def _wait(self, slot: Slot, reason: str) -> None:
        now = time.monotonic()
        if slot.wait_deadline is None:
            slot.wait_deadline = now + self.settings.drain_timeout_s
        elif now >= slot.wait_deadline:
            budget = self.budget()
            need = fmt_bytes(slot.plan.total) if slot.plan else "an unknown amount"
            self._refuse_pending(
                slot, f"cannot load {slot.label}: it needs {need} and {fmt_bytes(budget.free_bytes)} of "
                      f"{fmt_bytes(budget.total_bytes)} is free; still {reason} after "
                      f"{self.settings.drain_timeout_s:.0f}s (drain_timeout_s)")
            return
        if slot.detail != reason:
            slot.detail = reason
            self.events.publish(LoadProgressEvent(model=slot.model, kind=slot.kind, stage="waiting", detail=reason))
            self.publish_slot(slot, None)

    def _refuse_pending(self, slot: Slot, message: str) -> None:
        """No room: the waiters get 503, and nothing is recorded against the model."""
        self.fail_waiters(slot, ErrorCode.NO_CAPACITY, message, retry_after=5.0)
        slot.detail = message
        previous = slot.change_state(SlotState.FAILED)
        del self.slots[slot.key]
        self.publish_slot(slot, previous)

    # --- loading ---

    def _start(self, slot: Slot) -> None:
        previous = slot.change_state(SlotState.LOADING)
        slot.wait_deadline, slot.detail = None, "starting engine"
        s = self.settings
        config = RunnerConfig(
            load_timeout_s=s.load_timeout_s, stop_grace_s=s.stop_grace_s,
            health_interval_s=s.health_interval_s, health_failures=s.health_failures,
            health_path=self.adapter.health_path, pid_dir=self.paths.engine_pids,
            log_path=self.paths.logs / f"engine-{slot.file_slug}.log",
        )
        command = functools.partial(self._command, slot)
        runner = EngineRunner(slot.key, slot.generation, command, config, self._session, slot.stop_event, self.post)
        slot.task = asyncio.get_running_loop().create_task(runner.run())
        self.publish_slot(slot, previous)

    async def _command(self, slot: Slot, port: int, no_repack: bool) -> list[str]:
        assert slot.plan is not None
        try:
            binary = self.adapter.find_binary() or await self._install_engine(slot)
        except EngineMissing as exc:
            raise LoadFailure(str(exc), Severity.USER_ERROR) from None
        return self.adapter.command(binary, slot.entry, slot.kind, port, slot.plan, no_repack=no_repack)

    async def _install_engine(self, slot: Slot) -> Path:
        """First use: build llama-server once, however many loads wait for it."""
        if self._binary is None or (self._binary.done() and self._binary.exception()):
            self._binary = asyncio.ensure_future(self._build(slot))
        return await asyncio.shield(self._binary)

    async def _build(self, slot: Slot) -> Path:
        from prober.detect import take_snapshot

        loop = asyncio.get_running_loop()
        hardware = self.hardware or await asyncio.to_thread(take_snapshot)

        def progress(pct: float | None, line: str) -> None:
            detail = f"{pct:.0f}% {line}" if pct is not None else line
            event = LoadProgressEvent(model=slot.model, kind=slot.kind, stage="installing_engine", detail=detail)
            loop.call_soon_threadsafe(self.events.publish, event)

        version = self.settings.llama_cpp.version
        return await asyncio.to_thread(llamacpp_build.install, self.paths, version, hardware, progress)

    # --- runner reports ---

    def _find(self, key: SlotKey, generation: int) -> Slot | None:
        slot = self.slots.get(key)
        if slot is not None and slot.generation == generation:
            return slot
        return self.retiring.get((key, generation))

    def _on_spawned(self, ev: EngineSpawned) -> None:
        slot = self._find(ev.key, ev.generation)
        if slot is not None:
            slot.pid, slot.port = ev.pid, ev.port
            self.events.publish(LoadProgressEvent(model=slot.model, kind=slot.kind, stage="spawned",
                                                  detail=f"pid {ev.pid} on port {ev.port}"))

    def _on_ready(self, ev: EngineReady) -> None:
        slot = self._find(ev.key, ev.generation)
        if slot is None or slot.state != SlotState.LOADING:
            return  # unloaded while it started; the runner is stopping it
        previous = slot.change_state(SlotState.READY)
        slot.loaded_at, slot.detail = time.time(), ""
        self.last_errors.pop(slot.label, None)
        waiters, slot.waiters = slot.waiters, []
        for w in waiters:
            self._answer_waiter(slot, w)
        self._refresh_expiry(slot, DEFAULT)
        self.publish_slot(slot, previous)

    def _answer_waiter(self, slot: Slot, w: Waiter) -> None:
        waited = time.monotonic() - w.since
        if isinstance(w.request, AcquireRequest):
            lease = self.leases.grant(slot, w.peer, w.keep_alive)
            self.reply(w.peer, AcquireReply(req_id=w.request.req_id, lease_id=lease.id, model=slot.model,
                                            kind=slot.kind, base_url=slot.base_url, engine=slot.engine,
                                            load_s=waited))
        else:
            self.reply(w.peer, LoadReply(req_id=w.request.req_id, slot=slot.info(), load_s=waited))

    def _on_failed(self, ev: EngineFailed) -> None:
        slot = self._find(ev.key, ev.generation)
        if slot is None:
            return
        if slot.state == SlotState.STOPPING:
            self._on_stopped(EngineStopped(ev.key, ev.generation))  # it was going anyway
            return
        self._fail(slot, ev.message, ev.severity, ev.tail)
        self.schedule()  # its memory is free again

    def _fail(self, slot: Slot, message: str, severity: Severity, tail: str) -> None:
        rec = self._record_failure(slot.key, message)
        error = LoadError(at=time.time(), message=message, severity=severity, stderr_tail=tail, count=rec.count)
        self.last_errors[slot.label] = error
        while len(self.last_errors) > MAX_ERRORS:
            self.last_errors.pop(min(self.last_errors, key=lambda k: self.last_errors[k].at))
        detail = f"{slot.label} failed: {message}"
        hint = " (the engine's last output is in /lf/status last_errors)" if tail else ""
        self.fail_waiters(slot, ErrorCode.LOAD_FAILED, detail + hint)
        slot.detail = message
        previous = slot.change_state(SlotState.FAILED)
        del self.slots[slot.key]
        log.warning("%s (%s)", detail, severity)
        self.events.publish(ErrorEvent(model=slot.model, kind=slot.kind, error=error))
        self.publish_slot(slot, previous)

    def _on_stopped(self, ev: EngineStopped) -> None:
        slot = self.retiring.pop((ev.key, ev.generation), None)
        if slot is None:
            return
        previous = slot.change_state(SlotState.UNLOADED)
        self.publish_slot(slot, previous)
        self.schedule()

    # --- unloading and expiry ---

    def unload(self, slot: Slot, reason: str, *, force: bool = False) -> None:
        """Stop a slot's engine; one with requests in flight goes when they finish."""
        if slot.state == SlotState.PENDING:
            self._refuse_pending(slot, f"{slot.label} was unloaded before it loaded ({reason})")
            return
        if slot.state == SlotState.READY and slot.inflight and not force:
            slot.unload_when_idle = reason
            slot.detail = f"unloading after {slot.inflight} request(s) finish"
            self.publish_slot(slot, None)
            return
        if slot.state not in (SlotState.LOADING, SlotState.READY):
            return
        self.fail_waiters(slot, ErrorCode.LOAD_FAILED, f"{slot.label} was unloaded before it was ready ({reason})")
        previous = slot.change_state(SlotState.STOPPING)
        slot.detail = reason
        del self.slots[slot.key]
        self.retiring[(slot.key, slot.generation)] = slot
        slot.stop_event.set()
        log.info("stopping %s: %s", slot.label, reason)
        self.publish_slot(slot, previous)

    def expire_idle(self) -> None:
        now = time.time()
        for slot in list(self.slots.values()):
            if slot.state != SlotState.READY:
                continue
            if slot.inflight == 0 and slot.expires_at is not None and slot.expires_at <= now:
                self.unload(slot, "keep_alive expired")
            elif slot.loaded_at and now - slot.loaded_at > STABLE_AFTER_S and slot.key in self.failures:
                del self.failures[slot.key]

    def _refresh_expiry(self, slot: Slot, keep: float | None | str) -> None:
        """Ollama semantics: the clock starts when the last request ends."""
        seconds = slot.keep_alive_s if keep == DEFAULT else keep
        if slot.inflight or slot.pinned or seconds is None:
            slot.expires_at = None
        else:
            slot.expires_at = time.time() + float(seconds)  # type: ignore[arg-type]

    def _return_lease(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id)
        if lease is None:
            return
        slot = self._find(lease.key, lease.generation)
        if slot is None:
            return  # the engine is gone already (crashed or forced down)
        slot.inflight -= 1
        slot.last_used_at = time.time()
        if slot.state == SlotState.READY:
            self._refresh_expiry(slot, lease.keep_alive)
            if slot.inflight == 0 and slot.unload_when_idle:
                self.unload(slot, slot.unload_when_idle)
            elif slot.inflight == 0 and slot.expires_at is not None and slot.expires_at <= time.time():
                self.unload(slot, "keep_alive 0: unloaded after its request")
        self.schedule()

    # --- failures, waiters, events ---

    def _record_failure(self, key: SlotKey, message: str) -> Failures:
        now = time.monotonic()
        rec = self.failures.get(key)
        if rec is None or now - rec.last_at > FAILURE_WINDOW_S:
            rec = self.failures[key] = Failures(0, now)
        rec.count, rec.last_at, rec.message = rec.count + 1, now, message
        return rec

    def _backoff_left(self, key: SlotKey) -> float:
        rec = self.failures.get(key)
        if rec is None or rec.count < 2:
            return 0.0
        delay = min(BACKOFF_BASE_S * 2 ** (rec.count - 2), BACKOFF_MAX_S)
        return max(0.0, rec.last_at + delay - time.monotonic())

    def fail_waiters(self, slot: Slot, code: ErrorCode, message: str, retry_after: float | None = None) -> None:
        waiters, slot.waiters = slot.waiters, []
        for w in waiters:
            self.reply(w.peer, ErrorReply(req_id=w.request.req_id, code=code, message=message,
                                          retry_after_s=retry_after))

    def publish_slot(self, slot: Slot, previous: SlotState | None) -> None:
        self.events.publish(SlotEvent(slot=slot.info(), previous=previous))
