"""System RAM from psutil, clamped by the cgroup memory limit (v2, or v1) when one applies.

Parsing and clamping are pure; `read_cgroup_memory` walks this process's cgroup and its
ancestors, because a limit set on any of them (a container, a systemd slice) binds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")

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
    v2 = v1 = None
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


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
    try:
        v2, v1 = cgroup_paths(self_cgroup.read_text())
    except OSError:
        return None
    found: list[CgroupMemory] = []
    if v2 is not None:
        found += _scan_levels(root, v2, _V2)
    if v1 is not None:
        found += _scan_levels(root / "memory", v1, _V1)
    if not found:
        return None
    return CgroupMemory(
        limit=min(c.limit for c in found), headroom=min(c.headroom for c in found)
    )


def _scan_levels(base: Path, path: str, files: _Files) -> list[CgroupMemory]:
    # The path is as the host names it; inside a container without a cgroup
    # namespace only the mount root exists, so levels that are absent are skipped.
    parts = [part for part in path.split("/") if part]
    levels = [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    found = []
    for level in levels:
        limit = _read_int(level / files.limit, parse_limit)
        if limit is None:
            continue
        usage = _read_int(level / files.usage, lambda text: int(text.strip())) or 0
        stat = _read_text(level / "memory.stat")
        inactive = parse_stat(stat).get(files.inactive_key, 0) if stat else 0
        found.append(CgroupMemory(limit=limit, headroom=headroom(limit, usage, inactive)))
    return found


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path, parse: Callable[[str], int | None]) -> int | None:
    text = _read_text(path)
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
