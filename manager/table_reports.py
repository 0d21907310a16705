"""RunnerReports: how the SlotTable takes what its runners and off-loop readers report (a plan read, an engine
spawned, progressing, ready, failed or stopped, memory measured, an engine adopted).

A part of SlotTable (table.py), kept apart only to keep each module readable: the decisions these reports lead to
(schedule, _fail, _stop) are SlotTable's.
"""

from __future__ import annotations

from manager import budget as budgets
from manager.context import outgrown
from manager.engines.base import MemoryPlan
from manager.protocol import LoadReply, ModelEntry, Severity, SlotKind, SlotState
from manager.slots import Slot, SlotKey
from manager.table_state import TableState


class RunnerReports(TableState):
    def planned(self, key: SlotKey, generation: int, plan: MemoryPlan | None, learned: int | None,
                error: str = "") -> None:
        if (slot := self._find(key, generation)) is None or slot.state != SlotState.PENDING:
            return
        slot.planning = False
        if plan is None:
            self._fail(slot, error, Severity.USER_ERROR, "")
        elif outgrown(plan, slot.num_ctx) is None:  # else a larger context was asked meanwhile: read it again
            slot.plan, slot.learned_bytes = plan, learned
            slot.on_gpu = budgets.is_gpu_host(self.hardware)
        self.schedule()

    def spawned(self, key: SlotKey, generation: int, pid: int, port: int) -> None:
        if (slot := self._find(key, generation)) is not None:
            slot.pid, slot.port = pid, port
            self.progressed(key, generation, "spawned", None, f"pid {pid} on port {port}")

    def progressed(self, key: SlotKey, generation: int, stage: str, progress: float | None, detail: str) -> None:
        if (slot := self._find(key, generation)) is not None and (event := slot.progressed(stage, progress, detail)):
            self.out.publish(event)

    def ready(self, key: SlotKey, generation: int) -> None:
        slot = self._find(key, generation)
        if slot is None or slot.state != SlotState.LOADING:
            return  # unloaded while it started; the runner is stopping it
        slot.loaded_at = self.clock.now()
        self.failures.loaded(slot.label)
        self._now_ready(slot)
        self.schedule()  # serves its queue; a load waiting for this memory now waits on a ready, busy slot

    def _now_ready(self, slot: Slot) -> None:
        """A slot loading or resuming serves now: its load waiters are answered (a load takes no permit), its queue
        stays for the schedule to serve, its keep_alive starts."""
        previous = slot.change_state(SlotState.READY)
        slot.detail = ""
        for w in slot.loaded(self.clock.mono()):
            self.out.send(w.peer, LoadReply(req_id=w.request.req_id, slot=slot.info(), load_s=w.load_s))
        slot.refresh_expiry(self.clock.now())
        self.out.slot(slot, previous)

    def failed(self, key: SlotKey, generation: int, message: str, severity: Severity, tail: str) -> None:
        slot = self._find(key, generation)
        if slot is None:
            return
        if slot.state == SlotState.STOPPING:
            return self.stopped(key, generation)  # it was going anyway
        if slot.state == SlotState.PARKING:
            return self.park_failed(slot, message)
        self._fail(slot, message, severity, tail)
        self.schedule()  # its memory is free again

    def stopped(self, key: SlotKey, generation: int) -> None:
        slot = self.retiring.pop((key, generation), None)
        if slot is None:
            return
        previous = slot.change_state(SlotState.UNLOADED)
        self.leases.drop_slot(slot.key, slot.generation)
        self.out.slot(slot, previous)
        self.schedule()

    def measured(self, readings: dict[int, tuple[int, int]]) -> None:
        """(resident, private) bytes per engine pid, in the unit the budget counts."""
        for slot in self.memory_holders():
            if slot.pid is None or slot.pid not in readings:
                continue
            slot.measured_bytes, slot.private_bytes = readings[slot.pid]
            # NVML gave no per-process figure (a container): the reading is an estimate, and says how it was made.
            slot.memory_estimate = getattr(readings[slot.pid], "basis", "")
            if slot.at_ready_bytes is None and slot.state == SlotState.READY:
                slot.at_ready_bytes = slot.measured_bytes
        self.schedule()

    def adopt(self, entry: ModelEntry, kind: SlotKind, generation: int, pid: int, port: int,
              plan: MemoryPlan, threads: int, engine: str) -> Slot:
        """An engine an earlier manager started, still healthy: it is ready now, and its leases come with hellos."""
        slot = Slot(entry=entry, kind=kind, generation=generation, engine=engine, keep_alive_s=self.default_keep,
                    engine_reason="adopted from the previous manager",
                    parallel=self.engines.parallel(engine, entry.name), state=SlotState.READY, plan=plan, pid=pid, port=port, adopted=True,
                    loaded_at=self.clock.now(), last_used_at=self.clock.now(), on_gpu=budgets.is_gpu_host(self.hardware),
                    threads=threads,
                    load_reason="adopted from the previous manager")
        self.generations = max(self.generations, generation)
        self.slots[slot.key] = slot
        slot.refresh_expiry(self.clock.now())
        self.out.slot(slot, None)
        return slot
