"""System RAM from psutil, clamped by the cgroup memory limit (v2, or v1) when one applies.

Parsing and clamping are pure; `read_cgroup_memory` reads every level that probes/cgroup.py
walks (the process's cgroup and its ancestors), because a limit on any of them binds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from prober.probes.cgroup import (
    CGROUP_ROOT,
    SELF_CGROUP,
    controller_levels,
    controller_paths,
    read_text,
)

# cgroup v1 reports "no limit" as the largest page-aligned signed 64-bit value;
# no machine has 2**62 bytes, so anything above that means unlimited.
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class CgroupMemory:
    """The tightest cgroup limit on this process and the least headroom left under any limit."""

    limit: int
    headroom: int


@dataclass(frozen=True)
class _Files:
    """Where one cgroup version keeps a level's limit, usage and reclaimable cache."""

    limit: str
    usage: str
    inactive_key: str


_V2 = _Files("memory.max", "memory.current", "inactive_file")
_V1 = _Files("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def parse_limit(text: str) -> int | None:
    """A memory.max / memory.limit_in_bytes value; None for "max" or v1's huge no-limit value."""
    value = text.strip()
    if not value or value == "max":
        return None
    number = int(value)
    return None if number >= _V1_UNLIMITED else number


def parse_stat(text: str) -> dict[str, int]:
    """memory.stat as a dict ('inactive_file 8192' lines)."""
    stats = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stats[key] = int(value)
    return stats


def cgroup_paths(proc_self_cgroup: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory-controller path) of this process from /proc/self/cgroup text."""
    return controller_paths(proc_self_cgroup, "memory")


def headroom(limit: int, usage: int, inactive_file: int) -> int:
    # Inactive page cache is charged to the cgroup but reclaimed before the OOM
    # killer runs, so it counts as available, as `docker stats` counts it.
    return max(0, limit - max(0, usage - inactive_file))


def clamp(total: int, available: int, cgroup: CgroupMemory | None) -> tuple[int, int]:
    """(total, available) no larger than what the cgroup allows."""
    if cgroup is None:
        return total, available
    total = min(total, cgroup.limit)
    return total, min(available, cgroup.headroom, total)


def read_cgroup_memory(
    root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP
) -> CgroupMemory | None:
    """The binding cgroup memory limit of this process, or None when none applies."""
    v2_levels, v1_levels = controller_levels("memory", root, self_cgroup)
    found = [level for level in (_read_level(path, _V2) for path in v2_levels) if level]
    found += [level for level in (_read_level(path, _V1) for path in v1_levels) if level]
    if not found:
        return None
    return CgroupMemory(
        limit=min(c.limit for c in found), headroom=min(c.headroom for c in found)
    )


def _read_level(level: Path, files: _Files) -> CgroupMemory | None:
    limit = _read_int(level / files.limit, parse_limit)
    if limit is None:
        return None
    usage = _read_int(level / files.usage, lambda text: int(text.strip())) or 0
    stat = read_text(level / "memory.stat")
    inactive = parse_stat(stat).get(files.inactive_key, 0) if stat else 0
    return CgroupMemory(limit=limit, headroom=headroom(limit, usage, inactive))


def _read_int(path: Path, parse: Callable[[str], int | None]) -> int | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError:
        return None


def read_memory() -> tuple[int, int]:
    """(ram_total, ram_available) in bytes, as this process may use them."""
    vm = psutil.virtual_memory()
    return clamp(vm.total, vm.available, read_cgroup_memory())
