"""Cores as a budget on a CPU host: how many threads each engine starts with, and which engines may compute now.

ggml's threads meet at a barrier on every operation, so engines whose threads
together outnumber the cores stall each other: measured on 2 cores, four busy
tiny engines at the default thread count took 18.8 s for what one thread each
did in 0.1 s. So every CPU engine starts with a thread count from the policy,
and an engine with nothing in flight takes its threads (its first lease) only
while the engines already computing leave that many cores free. Further
requests wait in their model's queue (queues.py). Admission counts threads,
so `at_once` below is what the split is made for; where cores // at_once
leaves cores over, more engines may compute together. Engines on a GPU host
(NVIDIA, or Apple Silicon's Metal) keep their own few host threads and are not
budgeted, even a model only partly offloaded. Pure, over the table's slots;
the SlotTable owns the state and acts.

Policies (`cpu_policy`):

- `exclusive`: every engine starts with all the cores; one computes at a time.
  Best when one model at a time is busy; another model's request waits for
  the busy engine's current requests (tests/bench/bench_cores.py: two busy
  Gemma 3 270M copies reached 0.93x one engine's tokens/s, and the second
  one's first token waited 3.4 s).
- `shared`: a fixed `at_once` engines compute together (`cpu_shared_engines`,
  else as many as there are cores), each with max(1, cores // at_once)
  threads. Engines are never restarted as models come and go, but a model
  busy alone runs on its share only (one Gemma: 3.7 s on one thread of 2
  against 2.1 s on both).
- `auto` (the default): as many at once as there are models resident, at most
  the cores; so one model alone gets every core, and several split them.
  Measured on 2 cores, several busy models then reach 1.18x (two Gemma
  copies) to 1.71x (eight tiny models) one engine's tokens/s, no first token
  waits for another model's whole request, and the cost is a model busy
  alone while others are resident, which runs on its share. Idle engines are
  restarted when the count changes.

Fairness: an engine computing keeps taking its model's new requests (they
batch in its own slots at no extra thread cost) until a model has waited
`cpu_fair_share_s` for cores; then the engines that must make room yield:
they finish what they have in flight and queue their new requests behind the
waiting model, which is first in line for the cores they free. A long
generation thus delays the first model in line by at most the bound (plus up
to a tick of the table, 250 ms) plus the requests in flight when it ran out;
with several models waiting, each has its turn in the order they came.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from manager.config import Settings
from manager.protocol import CpuPlan, CpuStatus, HardwareSnapshot, SlotState
from manager.slots import Slot
from prober.probes.cpu_plan import affinity_cpus

EXCLUSIVE, SHARED, GPU = "exclusive", "shared", "gpu"
# An engine idle this long may be restarted with a new thread count: long enough that a chat's next message
# rarely meets the reload, short enough that a new split takes effect within seconds.
RETHREAD_IDLE_S = 5.0


@dataclass(frozen=True)
class Split:
    """What the policy comes to for a number of resident CPU models."""

    mode: str
    at_once: int
    threads: int
    why: str  # for people: the policy, what it came to, and the cores


def cpu_host(hardware: HardwareSnapshot | None) -> bool:
    """Whether engines compute on the CPU here. On an NVIDIA host they run on the GPU and on Apple Silicon on
    Metal: they keep the engine's own few host threads and are not budgeted."""
    return hardware is not None and not hardware.gpus and not hardware.unified_memory


def budget_cores(settings: Settings, hardware: HardwareSnapshot | None) -> int:
    """The threads all computing CPU engines may hold together: config, else the prober's plan."""
    if settings.cpu_cores:
        return settings.cpu_cores
    if hardware is None:  # until the first snapshot: this process's CPUs, as the prober will count them
        return len(affinity_cpus()) or os.cpu_count() or 1
    plan = hardware.cpu_plan
    return max(1, plan.cores if plan is not None else hardware.cpu_cores)


def split(settings: Settings, cores: int, residents: int) -> Split:
    """Engines computing at once and the threads each starts with, under the policy with `residents` CPU models."""
    policy = settings.cpu_policy
    if policy == EXCLUSIVE:
        at_once = 1
    elif policy == SHARED:
        at_once = min(cores, settings.cpu_shared_engines or cores)
    else:
        at_once = min(cores, max(1, residents))
    mode = EXCLUSIVE if at_once == 1 else SHARED
    why = f"cpu_policy {policy}: {mode}, {at_once} at once on {cores} cores"
    return Split(mode, at_once, max(1, cores // at_once), why)


def residents(slots: Iterable[Slot]) -> int:
    """The models resident: loading or ready (a pending load may yet evict one or be refused)."""
    return sum(1 for s in slots if s.state in (SlotState.LOADING, SlotState.READY) and s.local)


def stale(slots: Iterable[Slot], shape: Split, now: float) -> list[Slot]:
    """Ready engines started with another thread count than the policy gives now, idle for RETHREAD_IDLE_S:
    the ones to restart. One with requests in flight or queued keeps running as it is, and so does one whose
    keep_alive ends within RETHREAD_IDLE_S: its successor would keep that end, and be unloaded as it loads."""
    return [s for s in slots if s.state == SlotState.READY and s.local and s.threads != shape.threads
            and s.idle and now - max(s.last_used_at, s.loaded_at or 0.0) >= RETHREAD_IDLE_S
            and (s.expires_at is None or s.expires_at - now > RETHREAD_IDLE_S)]


def need(slot: Slot, cores: int) -> int:
    """Threads the slot's engine takes while it computes (none for an engine on a GPU: threads 0), never more
    than the budget."""
    return min(slot.threads, cores)


def computing(slot: Slot) -> bool:
    return slot.state == SlotState.READY and slot.inflight > 0


def busy_threads(slots: Iterable[Slot], cores: int) -> int:
    """Threads held by the engines computing now."""
    return sum(need(s, cores) for s in slots if computing(s))


class Gate:
    """The cores as they stand: which engines hold them, who is first in line, whether a slot may take some.

    Built from every slot (the table's and the retiring ones still serving) each
    time permits are handed out; see the module docstring.
    """

    def __init__(self, slots: Iterable[Slot], cores: int, mono: float, fair_share_s: float) -> None:
        self.slots = list(slots)
        self.cores = cores
        self.busy = busy_threads(self.slots, cores)
        waiting = [s for s in self.slots if self.blocked(s)]
        # Whoever has waited its fair share goes first, then arrival order: a freed core is never taken
        # by a later arrival while an earlier one still waits for it.
        waiting.sort(key=lambda s: (not self.starved(s, mono, fair_share_s), s.queue[0].ticket))
        self.waiting = waiting
        self.first = waiting[0] if waiting else None

    @property
    def free(self) -> int:
        return max(0, self.cores - self.busy)

    def allows(self, slot: Slot) -> bool:
        """Whether the slot may grant a lease as far as cores go."""
        if not need(slot, self.cores):
            return True
        if computing(slot):
            return not slot.cores_yield  # its threads are held already: more requests batch at no cost
        return (self.first is None or self.first is slot) and self.free >= need(slot, self.cores)

    def blocked(self, slot: Slot) -> bool:
        """A ready slot with requests queued that only the cores keep waiting."""
        return (slot.state == SlotState.READY and bool(slot.queue) and not computing(slot)
                and not slot.yielding_to and not slot.draining and need(slot, self.cores) > 0)

    @staticmethod
    def starved(slot: Slot, mono: float, fair_share_s: float) -> bool:
        return slot.cores_wait_since is not None and mono - slot.cores_wait_since >= fair_share_s

    def settle(self, mono: float, fair_share_s: float) -> list[Slot]:
        """After the permits are handed out: note since when each blocked slot waits, end the yields nobody
        needs any more, and make the holders yield to the first in line once it waited its share (returned)."""
        for slot in self.slots:
            slot.cores_wait_since = (mono if slot.cores_wait_since is None else slot.cores_wait_since) \
                if self.blocked(slot) else None
            if slot.cores_yield and (self.first is None or not computing(slot)):
                slot.cores_yield = None
        yielding = [s for s in self.to_yield(mono, fair_share_s) if not s.cores_yield]
        for slot in yielding:
            slot.cores_yield = self.first.label  # type: ignore[union-attr]
        return yielding

    def to_yield(self, mono: float, fair_share_s: float) -> list[Slot]:
        """The computing slots that must make room for the first in line, once it has waited its fair share:
        longest computing first, until enough cores would be free."""
        first = self.first
        if first is None or not self.starved(first, mono, fair_share_s):
            return []
        room, holders = self.free, []
        for slot in sorted((s for s in self.slots if computing(s) and need(s, self.cores)),
                           key=lambda s: s.computing_since or 0.0):
            if room >= need(first, self.cores):
                break
            holders.append(slot)
            room += need(slot, self.cores)
        return holders


def status(settings: Settings, hardware: HardwareSnapshot | None, gate: Gate, shape: Split, peak: int) -> CpuStatus:
    plan: CpuPlan | None = hardware.cpu_plan if hardware is not None else None
    return CpuStatus(cores=gate.cores, policy=settings.cpu_policy, mode=shape.mode if cpu_host(hardware) else GPU,
                     at_once=shape.at_once, threads=shape.threads, busy_threads=gate.busy, busy_threads_peak=peak,
                     fair_share_s=settings.cpu_fair_share_s, waiting=tuple(s.label for s in gate.waiting), plan=plan)
