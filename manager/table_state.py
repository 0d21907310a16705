"""TableState: what the SlotTable decides on (slots, retiring slots, leases, failures, peers, hardware) and the
views of it that decide nothing: the memory budget, the cores, a slot by key and generation.

SlotTable (table.py) inherits it and holds every decision; the split only keeps
each module readable.
"""

from __future__ import annotations

import itertools
from manager import budget as budgets, cores, queues
from manager.config import Settings
from manager.engines.base import Engines, LlamaCppOnly
from manager.effects import Clock, Effect, Outbox
from manager.failures import FailureBook
from manager.keepalive import parse_keep_alive
from manager.leases import LeaseTable
from manager.peers import PeerBook
from manager.protocol import BudgetInfo, CpuStatus, HardwareSnapshot, Severity, SlotKind
from manager.slots import HOLDS_MEMORY, Slot, SlotKey


class TableState:
    """The table's state; changed only by the SlotTable's decisions, on the manager's loop."""

    def __init__(self, settings: Settings, epoch: str, *, engines: Engines | None = None, parallel: int = 1,
                 clock: Clock | None = None) -> None:
        self.settings, self.epoch = settings, epoch
        # Which engine serves each model (manager/engines/registry.py); alone, llama.cpp serving `parallel` at once.
        self.engines: Engines = engines or LlamaCppOnly(parallel)
        self.clock = clock or Clock()
        self.slots: dict[SlotKey, Slot] = {}
        self.retiring: dict[tuple[SlotKey, int], Slot] = {}  # draining or stopping, off the table
        self.leases = LeaseTable(epoch)
        self.failures = FailureBook()
        self.peers = PeerBook()
        self.hardware: HardwareSnapshot | None = None
        self.stopping = False
        self.out = Outbox()
        self.board = queues.QueueBoard()
        self.arrivals = itertools.count(1)  # Waiter.ticket: the order requests arrive in, across every slot
        self.generations = 0
        self.busy_threads_peak = 0  # the most threads computing engines held at once: /lf/status shows it

    @property
    def default_keep(self) -> float | None:
        """keep_alive from the settings in force: they change live (live_config.py)."""
        return parse_keep_alive(self.settings.keep_alive)

    def drain(self) -> list[Effect]:
        """The effects of the messages handled since the last drain, each queue that changed published once."""
        for event in self.board.changes(self.slots.values()):
            self.out.publish(event)
        return self.out.take()

    def live(self, model: str, kind: SlotKind) -> Slot | None:
        return self.slots.get((model, kind))

    # --- memory ---

    def budget(self) -> BudgetInfo:
        held = [(s.private_bytes or 0, s.reserved) for s in self.memory_holders()]
        return budgets.budget_info(self.settings, self.hardware, held)

    def memory_holders(self) -> list[Slot]:
        # A remote model's engine holds nothing here: it is neither charged nor evicted for room.
        return [s for s in [*self.slots.values(), *self.retiring.values()] if s.state in HOLDS_MEMORY and s.local]

    # --- cores (cores.py) ---

    def core_budget(self) -> int:
        return cores.budget_cores(self.settings, self.hardware)

    def split(self) -> cores.Split:
        """What the CPU policy comes to with the models resident now (loading or ready)."""
        return cores.split(self.settings, self.core_budget(), cores.residents(self.slots.values()))

    def gate(self) -> cores.Gate:
        """The cores as they stand now: every slot computing counts, retiring ones still serving too."""
        return cores.Gate([*self.slots.values(), *self.retiring.values()], self.core_budget(), self.clock.mono(),
                          self.settings.cpu_fair_share_s)

    def cpu_status(self) -> CpuStatus | None:
        if self.hardware is None:
            return None
        return cores.status(self.settings, self.hardware, self.gate(), self.split(), self.busy_threads_peak)

    # --- lookups ---

    def _find(self, key: SlotKey, generation: int) -> Slot | None:
        slot = self.slots.get(key)
        if slot is not None and slot.generation == generation:
            return slot
        return self.retiring.get((key, generation))

    # --- decided by SlotTable (table.py); declared here for the parts of it kept in other modules ---

    def schedule(self) -> None:
        raise NotImplementedError

    def _fail(self, slot: Slot, message: str, severity: Severity, tail: str) -> None:
        raise NotImplementedError

    def _retire(self, slot: Slot) -> None:
        raise NotImplementedError

    def park_failed(self, slot: Slot, message: str) -> None:  # table_parking.py
        raise NotImplementedError
