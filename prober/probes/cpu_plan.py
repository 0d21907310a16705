"""The CPU plan: how many compute threads all busy CPU engines together may run.

Inputs are the physical cores among the CPUs this process may run on (its affinity mask,
which on Linux already reflects a cpuset cgroup) and the cgroup CPU quota. Parsing and the
plan are pure; `read_cpu_plan` reads the machine.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import psutil

from manager.protocol import CpuPlan
from prober.probes.cgroup import CGROUP_ROOT, SELF_CGROUP, controller_levels, read_text

SYS_CPU = Path("/sys/devices/system/cpu")

# The kernel's CFS period when cpu.max names only a quota (and v1's default).
DEFAULT_PERIOD_US = 100_000


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 cpu.max ("150000 100000") as cores (1.5); None for "max" or unreadable text."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else DEFAULT_PERIOD_US
    except ValueError:
        return None
    return _cores(quota, period)


def parse_cfs(quota_text: str, period_text: str | None) -> float | None:
    """cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us as cores; None for -1 (no quota)."""
    try:
        quota = int(quota_text.strip())
        period = int(period_text.strip()) if period_text else DEFAULT_PERIOD_US
    except ValueError:
        return None
    return _cores(quota, period)


def _cores(quota_us: int, period_us: int) -> float | None:
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def parse_cpu_list(text: str) -> frozenset[int]:
    """A kernel CPU list ("0-3,8,10-11") as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


def cpu_plan(
    physical_cores: int, affinity: int, quota: float | None, *, logical_cpus: int | None = None
) -> CpuPlan:
    """The plan from what this process may use; `logical_cpus`: the machine's (default `affinity`).

    The quota is rounded down, never up: threads beyond it get throttled in the middle of
    an operation, and since ggml's threads meet at a barrier after every operation, one
    throttled thread stalls all the others until the next CFS period. A quota below the
    physical cores is what limits the plan even where the floor of one core leaves
    `cores` unchanged.
    """
    physical_cores = max(1, physical_cores)
    cores = physical_cores
    if quota is not None and quota < physical_cores:
        cores, limited_by = max(1, math.floor(quota)), "cgroup quota"
    elif affinity < (logical_cpus or affinity):
        limited_by = "affinity"
    else:
        limited_by = "physical cores"
    return CpuPlan(
        cores=cores,
        physical_cores=physical_cores,
        affinity=affinity,
        quota=quota,
        limited_by=limited_by,
    )


def read_cgroup_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The tightest CPU quota on this process's cgroup or any ancestor, in cores; None: none."""
    v2_levels, v1_levels = controller_levels("cpu", root, self_cgroup)
    found = [_v2_quota(level) for level in v2_levels]
    found += [_v1_quota(level) for level in v1_levels]
    quotas = [quota for quota in found if quota is not None]
    return min(quotas) if quotas else None


def _v2_quota(level: Path) -> float | None:
    text = read_text(level / "cpu.max")
    return parse_cpu_max(text) if text is not None else None


def _v1_quota(level: Path) -> float | None:
    text = read_text(level / "cpu.cfs_quota_us")
    return parse_cfs(text, read_text(level / "cpu.cfs_period_us")) if text is not None else None


def physical_cores_of(cpus: Iterable[int], topology_root: Path = SYS_CPU) -> int | None:
    """Distinct physical cores among `cpus` from sysfs topology; None when it cannot be read.

    Hyperthread siblings share (package, core_id); where those files are missing the
    sibling list names the core instead.
    """
    topologies = [topology_root / f"cpu{n}" / "topology" for n in sorted(cpus)]
    if not topologies:
        return None
    for read_key in (_core_id, _siblings):
        keys = [read_key(topology) for topology in topologies]
        if all(key is not None for key in keys):
            return len(set(keys))
    return None


def _core_id(topology: Path) -> tuple[int, int] | None:
    package, core = read_text(topology / "physical_package_id"), read_text(topology / "core_id")
    try:
        return (int(package), int(core)) if package and core else None
    except ValueError:
        return None


def _siblings(topology: Path) -> frozenset[int] | None:
    text = read_text(topology / "thread_siblings_list")
    if not text:
        return None
    try:
        return parse_cpu_list(text) or None
    except ValueError:
        return None


def read_cpu_plan(
    cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP, topology_root: Path = SYS_CPU
) -> CpuPlan:
    """This process's CPU plan, read from the machine."""
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    cpus = affinity_cpus()
    affinity = len(cpus) if cpus else logical
    linux = sys.platform.startswith("linux")
    physical = physical_cores_of(cpus, topology_root) if linux else None
    if physical is None:
        # No topology to read (macOS, Windows, a sandboxed /sys): count each CPU in
        # the mask as a core, up to the machine's, as cpu_cores does (probes/cpu.py).
        physical = min(psutil.cpu_count(logical=False) or logical, affinity)
    quota = read_cgroup_quota(cgroup_root, self_cgroup) if linux else None
    return cpu_plan(physical, affinity, quota, logical_cpus=max(logical, affinity))


def affinity_cpus() -> frozenset[int]:
    """The CPUs this process may run on; empty where the OS will not say (macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    try:
        return frozenset(psutil.Process().cpu_affinity() or ())
    except (AttributeError, psutil.Error, OSError):
        return frozenset()
