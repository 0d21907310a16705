"""Parking: an engine that can release its GPU memory and keep its process (SGLang's release/resume of memory
occupation) is parked rather than unloaded when a load needs its room, and resumed when a request comes for it.

    ready -> parking -> parked -> resuming -> ready

A part of SlotTable (table.py), kept apart only to keep each module readable. Parking is chosen by eviction only,
on a GPU host, for an idle engine whose adapter parks and whose weights fit in the host memory free now (they
wait there while parked). A parked slot holds no GPU memory: it is not charged, and its keep_alive still runs
(expiry unloads it). A request for it queues, and the slot takes its memory back through admission, as a load
would: it may wait, or make room. Its runner does the park and the resume between two health probes
(runner.py), since a probe that generates must never meet a parked engine.
"""

from __future__ import annotations

import logging

from manager import budget as budgets
from manager.effects import Turn
from manager.protocol import LoadProgressEvent, SlotState
from manager.slots import Slot, SlotKey
from manager.table_reports import RunnerReports

log = logging.getLogger("lmforge.manager")


class Parking(RunnerReports):
    def may_park(self, slot: Slot) -> bool:
        """Whether eviction parks this slot instead of unloading it."""
        hardware = self.hardware
        if not (slot.state == SlotState.READY and slot.idle and slot.local and slot.plan is not None):
            return False
        if hardware is None or not budgets.is_gpu_host(hardware) or not self.engines.parks(slot.engine):
            return False
        # Its weights wait in host memory: what is free, less what engines parked or parking keep there (counted
        # even when the snapshot came after their park: a park may refuse when it could go, never the reverse).
        kept = sum(s.plan.weights for s in self.slots.values()
                   if s.state in (SlotState.PARKING, SlotState.PARKED) and s.plan is not None)
        return hardware.ram_available - kept > slot.plan.weights

    def park_engine(self, slot: Slot, reason: str) -> None:
        previous = slot.change_state(SlotState.PARKING)
        slot.detail = f"parking: {reason}"
        log.info("parking %s: %s", slot.label, reason)
        self.out.add(Turn(slot, "park"))
        self.out.slot(slot, previous)

    def resume_engine(self, slot: Slot) -> None:
        previous = slot.change_state(SlotState.RESUMING)
        slot.wait_deadline, slot.busy_wait_since, slot.detail = None, None, "resuming"
        self.out.publish(LoadProgressEvent(model=slot.model, kind=slot.kind, stage="resuming",
                                           detail="taking its GPU memory back"))
        self.out.add(Turn(slot, "resume"))
        self.out.slot(slot, previous)

    def turned(self, key: SlotKey, generation: int, turn: str) -> None:
        """Its runner parked or resumed the engine."""
        slot = self._find(key, generation)
        if slot is None:
            return
        if turn == "park" and slot.state == SlotState.PARKING:
            previous = slot.change_state(SlotState.PARKED)
            slot.detail, slot.measured_bytes, slot.private_bytes = "parked: its GPU memory released", None, None
            self.out.slot(slot, previous)
        elif turn == "resume" and slot.state == SlotState.RESUMING:
            self._now_ready(slot)
        self.schedule()  # the room it freed goes to the load that waited for it; a resumed one serves its queue

    def park_failed(self, slot: Slot, message: str) -> None:
        """A park that failed (its runner stopped the engine): the slot is unloaded, as eviction would have done
        without parking, and nothing is booked against the model: the engine was idle and healthy."""
        log.warning("%s could not park (%s); unloaded instead", slot.label, message)
        previous = slot.change_state(SlotState.STOPPING)
        slot.detail = f"could not park ({message}); unloaded instead"
        self._retire(slot)
        self.out.slot(slot, previous)
        self.stopped(slot.key, slot.generation)

    def wanted_parked(self) -> list[Slot]:
        """Parked slots that requests wait for: each takes its memory back through admission."""
        return [s for s in self.slots.values() if s.state == SlotState.PARKED and (s.waiters or s.queue)]
