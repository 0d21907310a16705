"""This process's cgroup and every ancestor, v2 and v1: the levels at which a limit may bind.

Shared by the memory and CPU-plan probes, because a limit set on any ancestor (a container,
a systemd slice) binds the process as much as one set on its own cgroup.
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def controller_paths(proc_self_cgroup: str, controller: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 path of `controller`) of this process from /proc/self/cgroup text.

    v1 may join controllers in one hierarchy ("3:cpu,cpuacct:/docker/abc").
    """
    v2 = v1 = None
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif controller in controllers.split(","):
            v1 = path
    return v2, v1


def levels(base: Path, path: str) -> list[Path]:
    """The cgroup directories from `path` up to `base`, the process's own first."""
    parts = [part for part in path.split("/") if part]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def controller_levels(
    controller: str, root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP
) -> tuple[list[Path], list[Path]]:
    """(v2 levels, v1 levels of `controller`) to read for this process; ([], []) without cgroups.

    The paths are as the host names them; inside a container without a cgroup namespace
    only the mount root exists, so callers skip the levels whose files are absent.
    """
    text = read_text(self_cgroup)
    if text is None:
        return [], []
    v2, v1 = controller_paths(text, controller)
    v2_levels = levels(root, v2) if v2 is not None else []
    v1_levels = levels(v1_mount(root, controller), v1) if v1 is not None else []
    return v2_levels, v1_levels


def v1_mount(root: Path, controller: str) -> Path:
    """Where v1 mounts `controller`: `root/cpu` is usually a link to `root/cpu,cpuacct`."""
    plain = root / controller
    if plain.is_dir():
        return plain
    try:
        joined = [p for p in root.iterdir() if controller in p.name.split(",") and p.is_dir()]
    except OSError:
        joined = []
    return joined[0] if joined else plain


def read_text(path: Path) -> str | None:
    """The file's text, or None when it is absent or unreadable (cgroup files come and go)."""
    try:
        return path.read_text()
    except OSError:
        return None
