"""Our engines' VRAM where NVML cannot tell it per process, as in containers: what the GPUs hold beyond a baseline
of other processes, shared among the engines NVML gives no figure for, in proportion to their plans.

Inside a container NVML lists GPU processes by the host's pids (none of ours match), lists none, or withholds
their figures (NVML_VALUE_NOT_AVAILABLE). The budget must still count what our engines hold, so the device totals
stand in: memory in use now, less what was in use while none of our engines ran.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import Callable, Collection, Mapping

from prober.probes.nvidia import GpuSample, sum_by_pid

MiB = 1024**2
GiB = 1024**3
# Less than any CUDA context holds (a few hundred MiB), more than drift between readings: a smaller pool means
# the engines without a figure hold nothing on the GPU yet, and no figure is better than a near-zero one.
MIN_ESTIMATE = 64 * MiB

Source = Callable[[], tuple[GpuSample, ...] | None]
Group = Callable[[int], int | None]  # a pid's process group (None: gone, or not ours to ask about)


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def regroup(samples: tuple[GpuSample, ...], ours: set[int], group: Group) -> tuple[GpuSample, ...]:
    """NVML lists the processes that hold VRAM, which for SGLang are its scheduler children, not the engine we
    started: each listed pid whose process group is one of our engines (each runs in a group of its own) is
    counted as that engine, its figures summed per GPU."""
    out = []
    for gpu in samples:
        if gpu.processes is None:
            out.append(gpu)
            continue
        held: dict[int, int | None] = {}
        for pid, used in gpu.processes:
            owner = pid if pid in ours else group(pid)
            owner = owner if owner in ours else pid
            before = held.get(owner, 0)
            held[owner] = None if used is None or before is None else before + used
        out.append(dataclasses.replace(gpu, processes=tuple(held.items())))
    return tuple(out)


@dataclass(frozen=True)
class VramFigure:
    """One engine's VRAM: NVML's own per-process figure, or an estimate that says how it was worked out."""

    bytes: int
    estimate: str = ""  # empty: NVML's figure for the process

    @property
    def estimated(self) -> bool:
        return bool(self.estimate)


class EngineVram:
    """Our engines' VRAM over successive readings; it keeps what an estimate needs between them.

    `baseline`: each GPU's memory in use at the last reading with none of our engines running (other processes
    and the driver), refreshed at every such reading. `sighted`: NVML has listed one of our pids, so pids match
    here (no container pid namespace) and an engine it does not list holds no VRAM yet, as on bare metal.
    Thread-safe: the manager reads in a worker thread.
    """

    def __init__(self, source: Source, group: Group = process_group) -> None:
        self._source, self._group = source, group
        self._lock = threading.Lock()
        self.baseline: dict[int, int] | None = None
        self.sighted = False

    def read(self, pids: Collection[int], plans: Mapping[int, int] | None = None) -> dict[int, VramFigure]:
        """A figure per engine pid that has one; `plans` (planned bytes by pid) shares an estimate between several.

        With no pids this reading only sets the baseline. An engine gets no figure (unknown, never zero) when NVML
        gives none and no estimate can be made: no baseline yet (engines adopted after a manager restart), or
        the GPUs hold less than MIN_ESTIMATE beyond it.
        """
        samples = self._source()
        if samples is None:
            return {}
        with self._lock:
            if not pids:
                self.baseline = {gpu.index: gpu.used for gpu in samples}
                return {}
            ours = set(pids)
            samples = regroup(samples, ours, self._group)
            self.sighted = self.sighted or any(pid in ours for pid in _listed(samples))
            return attribute(samples, ours, plans or {}, self.baseline, sighted=self.sighted)


def attribute(samples: tuple[GpuSample, ...], ours: set[int], plans: Mapping[int, int],
              baseline: Mapping[int, int] | None, *, sighted: bool) -> dict[int, VramFigure]:
    """Each of our pids' figure from one reading: NVML's where it has one, else its share of the unexplained pool."""
    measured = _measured(samples, ours)
    figures = {pid: VramFigure(nbytes) for pid, nbytes in measured.items()}
    lists_known = all(gpu.processes is not None for gpu in samples)
    if sighted and lists_known:
        without = {pid for pid in _listed(samples) if pid in ours} - measured.keys()  # listed, figure withheld
    else:
        without = ours - measured.keys()
    if not without:
        return figures
    pool = _pool(samples, baseline, measured)
    if pool is None or pool < MIN_ESTIMATE:
        return figures
    before = sum((baseline or {}).values())
    how = (f"estimated: NVML gives no per-process figure here; GPU memory in use less the {before / GiB:.1f} GiB "
           "in use before our engines started")
    if len(without) > 1:
        how += f", shared by plan among {len(without)} engines"
    shares = _shares(pool, sorted(without), plans)
    figures.update({pid: VramFigure(share, how) for pid, share in shares.items()})
    return figures


def _listed(samples: tuple[GpuSample, ...]) -> set[int]:
    return {pid for gpu in samples for pid, _ in gpu.processes or ()}


def _measured(samples: tuple[GpuSample, ...], ours: set[int]) -> dict[int, int]:
    """Our pids with a whole figure from NVML; none when a GPU's list is unknown (a pid may hold memory there)."""
    if any(gpu.processes is None for gpu in samples):
        return {}
    return sum_by_pid([(pid, used) for gpu in samples for pid, used in gpu.processes or () if pid in ours])


def _pool(samples: tuple[GpuSample, ...], baseline: Mapping[int, int] | None,
          measured: Mapping[int, int]) -> int | None:
    """Bytes in use beyond the baseline that no measured engine of ours accounts for; None without a baseline
    for exactly these GPUs (one lost or added since: wait for the next reading with no engine running)."""
    if baseline is None or set(baseline) != {gpu.index for gpu in samples}:
        return None
    pool = 0
    for gpu in samples:
        accounted = sum(used or 0 for pid, used in gpu.processes or () if pid in measured)
        pool += max(0, gpu.used - baseline[gpu.index] - accounted)
    return pool


def _shares(pool: int, pids: list[int], plans: Mapping[int, int]) -> dict[int, int]:
    """`pool` split in proportion to each pid's plan; one without a plan weighs as the average of the others."""
    planned = [plans[pid] for pid in pids if plans.get(pid, 0) > 0]
    average = sum(planned) // len(planned) if planned else 1
    weights = [plans[pid] if plans.get(pid, 0) > 0 else average for pid in pids]
    shares = [pool * weight // sum(weights) for weight in weights]
    shares[weights.index(max(weights))] += pool - sum(shares)  # rounding: the figures add up to the pool
    return dict(zip(pids, shares, strict=True))
