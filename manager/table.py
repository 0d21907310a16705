"""SlotTable: every decision on the manager's state (slots, retiring slots, leases, failures: table_state.py).

The manager loop, or a test, drives it one message at a time. It never awaits and
never touches a process, file or socket, and it reads time from its clock. What must
happen outside (replies, events, starting and stopping runners, reading a model's
header, remembering a measurement) leaves as effects in `outbox`; the service acts.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from manager import budget as budgets, cores, queues
from manager.context import reload_reason
from manager.effects import Learn, Plan, Spawn, Stop
from manager.failures import STABLE_AFTER_S
from manager.keepalive import KeepAliveError, parse_keep_alive
from manager.leases import Lease
from manager.protocol import (
    PROTOCOL, AbandonNotice, AcquireReply, AcquireRequest, ErrorCode, ErrorEvent, HardwareEvent,
    HardwareSnapshot, HeldLease, HelloReply, HelloRequest, LeaseOutcome, LoadProgressEvent, LoadReply, LoadRequest,
    ModelEntry, PeerRole, ReleaseNotice, Severity, SlotEvent, SlotKind, SlotState,
    UnloadReply, UnloadRequest,
)
from manager.refusals import Refusal, protocol_mismatch, refuse_new_slot, waited_too_long
from manager.scheduler import Admit, Evict, Reject, Wait, plan_admission
from manager.slots import DEFAULT_KEEP as DEFAULT, Slot, SlotKey, Waiter
from manager.table_parking import Parking
from prober.engine_choice import Choice

log = logging.getLogger("lmforge.manager")
# States in which a slot's engine process runs: unloading stops it.
RUNS = {SlotState.LOADING, SlotState.READY, SlotState.PARKING, SlotState.PARKED, SlotState.RESUMING}


class SlotTable(Parking):
    """See the module docstring; the state it decides on and the views of it are TableState's (table_state.py)."""

    # --- peers and leases ---

    def hello(self, peer: bytes, req: HelloRequest) -> None:
        if req.protocol != PROTOCOL:
            return self.out.error(peer, req.req_id, ErrorCode.PROTOCOL_MISMATCH, protocol_mismatch(req.protocol))
        holders = self.peers.greet(peer, req.role, req.pid, self.clock.now())
        self._reconcile(peer, holders, req.leases)
        self.out.send(peer, HelloReply(req_id=req.req_id, epoch=self.epoch, manager_pid=os.getpid()))
        self.schedule()

    def _reconcile(self, peer: bytes, holders: set[bytes], declared: tuple[HeldLease, ...]) -> None:
        """The peer's word wins: leases it no longer holds return, ones we did not know are taken over."""
        for lease in self.leases.reconcile(peer, holders, {d.lease_id for d in declared}):
            log.info("lease %s of %s is not held by its peer any more; returned", lease.id, lease.key[0])
            self._returned(lease, LeaseOutcome.CLIENT_GONE)
        for d in declared:
            slot = self._find((d.model, d.kind), d.generation)
            if d.lease_id not in self.leases and slot is not None and slot.state == SlotState.READY:
                self.leases.add(d.lease_id, slot, peer, DEFAULT, self.clock.mono())
                slot.refresh_expiry(self.clock.now())

    def release(self, peer: bytes, notice: ReleaseNotice) -> None:
        lease = self.leases.pop(notice.lease_id, peer)
        if lease is None:
            log.info("release of unknown lease %s from %r ignored", notice.lease_id, peer)
            return
        self._returned(lease, notice.outcome)

    def _returned(self, lease: Lease, outcome: LeaseOutcome) -> None:
        slot = self._find(lease.key, lease.generation)  # None: the engine is gone already (crashed or forced down)
        if slot is not None:
            self.out.mark(slot, lease, f"ended ({outcome})")
            slot.inflight -= 1
            slot.last_used_at = self.clock.now()
            slot.hold_s = queues.mean_hold(slot.hold_s, self.clock.mono() - lease.since)
            if outcome == LeaseOutcome.ENGINE_GONE and slot.state == SlotState.READY:
                self._fail(slot, "the engine refused the gateway's connection: it is gone", Severity.TRANSIENT, "")
            self._went_idle(slot)
        self.schedule()  # ends by serving: the permit goes to the oldest acquire queued for one, on any slot

    def abandon(self, peer: bytes, notice: AbandonNotice) -> None:
        """An acquire whose caller stopped waiting leaves its queue (one granted already comes back as a release)."""
        if (found := queues.find(self.slots.values(), peer, notice.req_id)) is not None:
            found[0].queue.remove(found[1])
            self._went_idle(found[0])
            self.schedule()  # it may have been first in line for the cores, or the last a draining slot waited for

    def _went_idle(self, slot: Slot) -> None:
        """Once ready with nothing in flight or queued, a draining slot stops and any other starts its keep_alive;
        a parked one nobody waits for any more (its requests left) starts its keep_alive again."""
        if slot.state == SlotState.PARKED and slot.idle:
            slot.refresh_expiry(self.clock.now())
        if slot.state != SlotState.READY or not slot.idle:
            return
        if slot.draining:
            self._stop(slot, slot.draining)
            return
        slot.refresh_expiry(self.clock.now())
        if slot.expires_at is not None and slot.expires_at <= self.clock.now():
            self.unload(slot, "keep_alive 0: unloaded after its request")

    def _grant(self, slot: Slot, w: Waiter) -> None:
        lease = self.leases.grant(slot, w.peer, w.keep_alive, self.clock.mono(),  # type: ignore[arg-type]
                                  w.request.trace_id[:queues.TRACE_CHARS])  # type: ignore[union-attr]
        self.out.mark(slot, lease, "started")
        slot.keep_until = None  # its own keep_alive from now on
        if slot.inflight == 1:  # it takes its threads now (cores.py), on a turn of its own
            slot.computing_since, slot.cores_yield = self.clock.mono(), None
            busy = cores.busy_threads([*self.slots.values(), *self.retiring.values()], self.core_budget())
            self.busy_threads_peak = max(self.busy_threads_peak, busy)
        slot.next_keep, slot.last_used_at = w.keep_alive, self.clock.now()
        slot.refresh_expiry(self.clock.now())
        self.out.send(w.peer, AcquireReply(req_id=w.request.req_id, lease_id=lease.id, model=slot.model,
                                           kind=slot.kind, base_url=slot.base_url, engine=slot.engine,
                                           generation=slot.generation, load_s=w.load_s))

    def _serve(self) -> None:
        """Free permits go to the oldest queued acquires they can serve, across every slot; then the cores' fair
        share is settled: who waits for them since when, and who must make room."""
        while True:
            gate = self.gate()
            if not (found := queues.next_grant(self.slots.values(), len(self.leases), self.settings.max_inflight,
                                               gate)):
                break
            slot, waiter = found
            slot.queue.popleft()  # next_grant serves a queue's head
            self._grant(slot, waiter)
        for slot in gate.settle(self.clock.mono(), self.settings.cpu_fair_share_s):
            log.info("%s finishes its requests in flight and queues new ones: %s waited %.1fs for the cores",
                     slot.label, slot.cores_yield, self.settings.cpu_fair_share_s)

    # --- requests ---

    def acquire(self, peer: bytes, req: AcquireRequest, entry: ModelEntry | None) -> None:
        """Lease the model's engine now, queue the request, or refuse it past the queue (`entry`: when none is live)."""
        if (target := self._target(peer, req, entry)) is None:
            return
        keep, slot = target
        if isinstance(verdict := queues.admit(slot, len(self.leases), self.settings, self.gate()), Refusal):
            return self.out.error(peer, req.req_id, *verdict)
        waiter = Waiter(peer, req, keep, since=self.clock.mono(), ticket=next(self.arrivals))
        if verdict == queues.GRANT:
            self._grant(slot, waiter)
        else:
            self._park(slot, waiter)

    def load(self, peer: bytes | None, req: LoadRequest, entry: ModelEntry | None) -> None:
        if (target := self._target(peer, req, entry)) is None:
            return
        keep, slot = target
        slot.pinned = slot.pinned or req.pin
        if keep != DEFAULT:
            slot.keep_alive_s, slot.next_keep = keep, DEFAULT  # type: ignore[assignment]
        if slot.state == SlotState.READY:
            slot.refresh_expiry(self.clock.now())
            self.out.send(peer, LoadReply(req_id=req.req_id, slot=slot.info()))
            self.out.slot(slot, None)
        else:
            self._park(slot, Waiter(peer, req, keep, since=self.clock.mono(), ticket=next(self.arrivals)))

    def unload_request(self, peer: bytes, req: UnloadRequest, installed: bool) -> None:
        names = self.unload_model(req.model, "unloaded on request", req.kind)
        if req.model is not None and not names and not installed:
            self.out.error(peer, req.req_id, ErrorCode.MODEL_NOT_FOUND, f"model {req.model!r} is not installed")
            return
        self.out.send(peer, UnloadReply(req_id=req.req_id, unloaded=tuple(names)))
        self.schedule()

    def unload_model(self, model: str | None, reason: str, kind: SlotKind | None = None, *,
                     keep: Callable[[ModelEntry], bool] = lambda entry: False) -> list[str]:
        """Unload the slots of `model` (None: every model) of `kind` (None: every kind), but not those whose entry
        `keep` accepts; one with requests in flight drains first. The labels of those unloaded."""
        gone = [s for s in self.slots.values()
                if model in (None, s.model) and kind in (None, s.kind) and not keep(s.entry)]
        for slot in gone:
            self.unload(slot, reason, explicit=True)
        return [s.label for s in gone]

    def set_hardware(self, snapshot: HardwareSnapshot) -> None:
        self.hardware = snapshot
        for slot in [*self.slots.values(), *self.retiring.values()]:  # adopted slots came before the first snapshot
            slot.on_gpu = budgets.is_gpu_host(snapshot)
            if not cores.cpu_host(snapshot):
                slot.threads = 0  # engines on a GPU are not budgeted, even one started before the snapshot
        self.out.publish(HardwareEvent(snapshot=snapshot))
        self.schedule()

    def _target(self, peer: bytes | None, req: AcquireRequest | LoadRequest,
                entry: ModelEntry | None) -> tuple[object, Slot] | None:
        """The request's parsed keep_alive and its slot; None once it was answered with an error."""
        try:
            keep = DEFAULT if req.keep_alive is None else parse_keep_alive(req.keep_alive)
        except KeepAliveError as exc:
            return self.out.error(peer, req.req_id, ErrorCode.BAD_REQUEST, str(exc))
        if self.stopping:
            return self.out.error(peer, req.req_id, ErrorCode.SHUTTING_DOWN, "LMForge is shutting down")
        if (slot := self.slots.get((req.model, req.kind))) is None:
            choice = self.engines.choose(entry, req.kind, self.hardware) if entry is not None else None
            refusal = refuse_new_slot(req.model, req.kind, entry, choice, self.failures, self.clock.mono())
            if refusal is not None:
                return self.out.error(peer, req.req_id, *refusal)
            reason = "auto_load" if peer is None else "a request for it"
            slot = self._new_slot(entry, req.kind, reason, choice)  # type: ignore[arg-type]
        return keep, self._fit_context(slot, req.num_ctx)

    def _fit_context(self, slot: Slot, asked: int) -> Slot:
        """The slot that serves an ask for `asked` tokens of context: this one, or a larger one replacing it as an
        explicit unload does (its requests in flight end, then the new one loads and serves every waiter)."""
        if (needed := slot.ask_context(asked)) is None:
            return slot
        old_ctx = slot.plan.ctx_size  # type: ignore[union-attr]
        reason = reload_reason(old_ctx, needed)
        log.info("reloading %s: %s", slot.label, reason)
        if slot.state in (SlotState.LOADING, SlotState.RESUMING):
            self._stop(slot, reason)  # its waiters move to the fresh slot
        else:
            self.unload(slot, reason, explicit=True)
        fresh = self._successor(slot, reason)
        fresh.num_ctx, fresh.grew_from, fresh.load_reason = max(fresh.num_ctx, asked), old_ctx, reason
        return fresh

    def _successor(self, old: Slot, reason: str, choice: Choice | None = None) -> Slot:
        """The slot that takes over from one going away: the model's live one, or a fresh one with its settings, on
        its engine unless `choice` names another."""
        same = Choice(old.engine, old.engine_reason, old.fallbacks)
        return self.slots.get(old.key) or self._new_slot(old.entry, old.kind, reason, choice or same,
                                                         pinned=old.pinned, keep_alive_s=old.keep_alive_s)

    def _new_slot(self, entry: ModelEntry, kind: SlotKind, reason: str, choice: Choice, *, pinned: bool = False,
                  keep_alive_s: float | None | str = DEFAULT) -> Slot:
        self.generations += 1
        keep = self.default_keep if keep_alive_s == DEFAULT else keep_alive_s
        slot = Slot(entry=entry, kind=kind, generation=self.generations, engine=choice.engine, pinned=pinned,
                    engine_reason=choice.reason, fallbacks=choice.fallbacks,
                    keep_alive_s=keep, load_started=self.clock.mono(), load_reason=reason,  # type: ignore[arg-type]
                    parallel=self.engines.parallel(choice.engine, entry.name))
        self.slots[slot.key] = slot
        self.out.slot(slot, None)
        return slot

    def _park(self, slot: Slot, waiter: Waiter) -> None:
        slot.park(waiter)
        slot.refresh_expiry(self.clock.now())
        self.schedule()

    def _requeue(self, old: Slot, waiters: list[Waiter]) -> None:
        """Requests parked on a slot that is going away wait for a fresh load of the same model."""
        if not waiters:
            return
        fresh = self._successor(old, f"asked for while its previous engine stopped ({old.draining or old.detail})")
        fresh.ask_context(old.num_ctx)  # what its requests asked for still holds
        fresh.park(*waiters)
        fresh.refresh_expiry(self.clock.now())

    # --- admission ---

    def schedule(self) -> None:
        """Give each pending slot, oldest first, what the policy says: load, evict, wait or refuse."""
        wanted: dict[tuple[SlotKey, int], str] = {}  # busy slots that must yield, and to whom
        self._rethread()
        pending = sorted([*(s for s in self.slots.values() if s.state == SlotState.PENDING), *self.wanted_parked()],
                         key=lambda s: s.load_started)
        for slot in pending:
            if self.slots.get(slot.key) is not slot or slot.state not in (SlotState.PENDING, SlotState.PARKED):
                continue  # an earlier decision in this pass refused or replaced it
            try:
                self._schedule_one(slot, wanted)
            except Exception as exc:  # one slot's bug must not stall every slot behind it
                log.exception("scheduling %s failed", slot.label)
                self._fail(slot, f"internal error while scheduling: {exc}", Severity.ENGINE_BUG, "")
        self._settle_yields(wanted)
        self._serve()  # last: admission and yields above decide which slots may grant

    def _schedule_one(self, slot: Slot, wanted: dict[tuple[SlotKey, int], str]) -> None:
        budget = self.budget()
        if budget.source == "unknown" and slot.local:  # a remote engine takes no room here: it needs no budget
            return self._wait(slot, "waiting for the hardware prober's first snapshot")
        if slot.plan is None:
            if not slot.planning:
                slot.planning = True
                self.out.add(Plan(slot))
            return
        if not slot.local:
            return self._start(slot)  # and makes none
        if any(key == slot.key for key, _ in self.retiring):
            return self._wait(slot, f"waiting for the previous engine of {slot.label} to stop")
        for _ in range(2):  # after evicting, ask again: a count limit may now allow the load
            residents = [s.resident(self.clock.now()) for s in self.memory_holders()]
            decision = plan_admission(slot.estimate, budget.total_bytes, residents, self.settings.max_loaded_models)
            if isinstance(decision, Admit):
                return self.resume_engine(slot) if slot.state == SlotState.PARKED else self._start(slot)
            if not isinstance(decision, Evict):
                break
            victims = [v for v in self.memory_holders() if (v.key, v.generation) in decision.victims]
            for victim in victims:
                reason = f"evicted to make room for {slot.label}"
                if self.may_park(victim):
                    self.park_engine(victim, reason)  # its process stays: a request resumes it in seconds
                elif victim.state != SlotState.PARKING:
                    self.unload(victim, reason)
            decision = Wait(f"evicting {', '.join(v.label for v in victims)}")
        if isinstance(decision, Reject):
            return self._refuse_pending(slot, f"cannot load {slot.label}: {decision.reason}")
        assert isinstance(decision, Wait)
        self._wait(slot, decision.reason)
        for key in decision.busy:
            if (busy := self._find(*key)) is not None:  # type: ignore[misc]
                busy.contended = True
        if slot.waited_its_share(decision.busy, self.clock.mono(), self.settings.fair_share_s):
            wanted.update({key: slot.label for key in decision.busy})  # type: ignore[misc]

    def _rethread(self) -> None:
        """Restart each engine idle for a while whose thread count the policy no longer gives, never a busy one:
        the policy or the plan changed, or the models resident did."""
        if not cores.cpu_host(self.hardware) or not self.peers.has(PeerRole.GATEWAY):
            return  # before the gateway's hello, an adopted engine's leases are not known: it may be busy
        if any(s.state == SlotState.PENDING for s in self.slots.values()):
            return  # a load decides first: it may evict the engine or be refused, and the split with it
        shape = self.split()
        for slot in cores.stale(self.slots.values(), shape, self.clock.now()):
            reason = f"threads {slot.threads} → {shape.threads} ({shape.why})"
            self.unload(slot, reason, explicit=True)
            fresh = self._successor(slot, reason)
            fresh.ask_context(slot.num_ctx)
            # Nobody asked for the restart: the model keeps its keep_alive and its place in the LRU order.
            fresh.next_keep, fresh.keep_until, fresh.last_used_at = slot.next_keep, slot.expires_at, slot.last_used_at

    def _settle_yields(self, wanted: dict[tuple[SlotKey, int], str]) -> None:
        """Mark the busy slots a starved load waits for; unmark the ones no load waits for any more."""
        loads_wait = any(s.state == SlotState.PENDING for s in self.slots.values()) or bool(self.wanted_parked())
        for slot in [s for s in self.slots.values() if s.state == SlotState.READY]:
            if slot.yield_to(wanted.get((slot.key, slot.generation)), loads_wait):
                self.out.slot(slot, None)

    def _wait(self, slot: Slot, reason: str) -> None:
        if (changed := slot.waits(reason, self.clock.mono(), self.settings.drain_timeout_s)) is None:
            return self._refuse_pending(slot, waited_too_long(slot.label, slot.estimate, self.budget(), reason,
                                                              self.settings.drain_timeout_s))
        if changed:
            self.out.publish(LoadProgressEvent(model=slot.model, kind=slot.kind, stage="waiting", detail=reason))
            self.out.slot(slot, None)

    def _refuse_pending(self, slot: Slot, message: str, code: ErrorCode = ErrorCode.NO_CAPACITY) -> None:
        """No room: the waiters get 503, and nothing is recorded against the model (a parked engine stays)."""
        self.out.refuse(slot.take_waiters(), code, message, 5.0)
        slot.detail = message
        if slot.state == SlotState.PARKED:  # it stays parked, and its keep_alive runs again
            slot.wait_deadline = slot.busy_wait_since = None
            slot.refresh_expiry(self.clock.now())
            return
        previous = slot.change_state(SlotState.FAILED)
        del self.slots[slot.key]
        self.out.slot(slot, previous)

    def _start(self, slot: Slot) -> None:
        previous = slot.change_state(SlotState.LOADING)
        # Counted among the residents now. Before the first snapshot (a configured memory budget does not wait for
        # one) the host counts as a CPU host.
        on_cpu = self.hardware is None or cores.cpu_host(self.hardware)
        slot.threads = self.split().threads if on_cpu and slot.local else 0
        slot.wait_deadline, slot.busy_wait_since, slot.detail = None, None, "starting engine"
        self.out.add(Spawn(slot))
        self.out.slot(slot, previous)

    # --- unloading, expiry, failure ---

    def unload(self, slot: Slot, reason: str, *, force: bool = False, explicit: bool = False) -> None:
        """Stop a slot's engine. One with requests in flight is drained: it takes no new ones and goes when they end."""
        if slot.state == SlotState.PENDING:
            return self._refuse_pending(slot, f"{slot.label} was unloaded before it loaded ({reason})",
                                        ErrorCode.LOAD_FAILED)
        if slot.state == SlotState.READY and slot.inflight and not force:
            if not explicit:
                return
            slot.draining, slot.detail = reason, f"unloading after {slot.inflight} request(s) finish"
            self._retire(slot)
            self.out.slot(slot, None)
            return
        if slot.state in (SlotState.LOADING, SlotState.RESUMING):
            self.out.refuse(slot.take_waiters(), ErrorCode.LOAD_FAILED,
                            f"{slot.label} was unloaded before it was ready ({reason})")
        if slot.state in RUNS:
            self._stop(slot, reason)

    def _retire(self, slot: Slot) -> None:
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]
        self.retiring[(slot.key, slot.generation)] = slot
        waiters = slot.take_waiters()
        if self.stopping:
            self.out.refuse(waiters, ErrorCode.SHUTTING_DOWN, "LMForge is shutting down")
        else:
            self._requeue(slot, waiters)

    def _stop(self, slot: Slot, reason: str) -> None:
        if slot.plan is not None and slot.measured_bytes is not None and not slot.memory_estimate:
            # An estimate shares out what other processes use too: never learned as the model's own cost.
            self.out.add(Learn(slot.model, slot.kind, slot.plan.ctx_size, slot.charged, slot.plan.total))
        previous = slot.change_state(SlotState.STOPPING)
        slot.detail = reason
        self._retire(slot)
        self.out.add(Stop(slot))
        log.info("stopping %s: %s", slot.label, reason)
        self.out.slot(slot, previous)

    def tick(self) -> None:
        now = self.clock.now()
        for slot in [s for s in self.slots.values() if s.state in (SlotState.READY, SlotState.PARKED)]:
            if slot.expired(now):
                self.unload(slot, "keep_alive expired")
            elif slot.loaded_at and now - slot.loaded_at > STABLE_AFTER_S:
                self.failures.stable(slot.key)
        self.schedule()

    def _fail(self, slot: Slot, message: str, severity: Severity, tail: str) -> None:
        if self._fall_back(slot, message, severity):
            return
        error = self.failures.record(slot.key, slot.label, message, severity, tail, self.clock.mono(), self.clock.now())
        detail = f"{slot.label} failed: {message}"
        hint = " (the engine's last output is in /lf/status last_errors)" if tail else ""
        self.out.refuse(slot.take_waiters(), ErrorCode.LOAD_FAILED, detail + hint)
        slot.detail = message
        previous = slot.change_state(SlotState.FAILED)
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]
        self.retiring.pop((slot.key, slot.generation), None)
        self.leases.drop_slot(slot.key, slot.generation)
        if slot.pid is not None:
            self.out.add(Stop(slot))  # whatever is left of it goes
        log.warning("%s (%s)", detail, severity)
        self.out.publish(ErrorEvent(model=slot.model, kind=slot.kind, error=error))
        self.out.slot(slot, previous)

    def _fall_back(self, slot: Slot, message: str, severity: Severity) -> bool:
        """An engine that could not install or load a model hands it, with its waiters, to the next engine that can
        serve it (Choice.fallbacks), and says so; False when none is left, or the failure was not the engine's."""
        if severity == Severity.TRANSIENT or slot.state not in (SlotState.PENDING, SlotState.LOADING):
            return False
        if self.stopping or self.slots.get(slot.key) is not slot:
            return False
        failed = (*slot.failed_engines, slot.engine)
        choice = self.engines.choose(slot.entry, slot.kind, self.hardware, failed)
        if not choice.engine:
            return False
        said = f"{slot.engine} could not serve {slot.label} ({message}); trying {choice.engine}"
        log.warning("%s", said)
        waiters = slot.take_waiters()
        slot.detail = message
        previous = slot.change_state(SlotState.FAILED)
        del self.slots[slot.key]
        if slot.pid is not None:
            self.out.add(Stop(slot))  # whatever is left of it goes
        # Its slot ends, but not the load: those following it see "waiting" for the next engine, never "failed".
        self.out.publish(SlotEvent(slot=slot.info(), previous=previous))
        fresh = self._successor(slot, said, choice)
        fresh.failed_engines, fresh.num_ctx = failed, slot.num_ctx
        fresh.park(*waiters)
        self.out.publish(LoadProgressEvent(model=fresh.model, kind=fresh.kind, stage="waiting", detail=said))
        self.schedule()
        return True

    def shutdown(self) -> None:
        """Answer every waiter and stop every engine."""
        self.stopping = True
        for slot in [*self.slots.values(), *self.retiring.values()]:
            self.out.refuse(slot.take_waiters(), ErrorCode.SHUTTING_DOWN, "LMForge is shutting down")
            if slot.state == SlotState.PENDING:
                self._refuse_pending(slot, "LMForge is shutting down", ErrorCode.SHUTTING_DOWN)
            elif slot.state in RUNS:
                self._stop(slot, "manager shutting down")

