"""This home's LMForge processes for when supervisord is not there to stop them: the four programs found
by command line and LMFORGE_HOME, engines by their pid records, and stopping them, the manager first."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Sequence

import psutil

from manager.config import Paths
from manager.process import kill_group, recorded_engines

# `python -m <module>` -> the program's name in supervisord.conf.tmpl.
MODULES = {"manager": "manager", "prober": "prober", "catalog": "downloader", "gateway": "gateway"}
ORDER = ("manager", "prober", "downloader", "gateway", "engine")
MANAGER_WAIT_S = 30.0  # the manager's stopwaitsecs: its graceful path stops its engines first
PROGRAM_WAIT_S = 15.0  # the gateway's stopwaitsecs, the longest of the others
KILL_WAIT_S = 5.0


@dataclass(frozen=True)
class Found:
    name: str  # a program's name, or "engine"
    proc: psutil.Process

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(frozen=True)
class Stopped:
    name: str
    pid: int
    killed: bool  # needed SIGKILL; for an engine, it outlived its manager's stop


def find(paths: Paths) -> list[Found]:
    """Every live program and recorded engine of this home, whoever started it: programs first."""
    return find_programs(paths) + find_engines(paths)


def find_programs(paths: Paths) -> list[Found]:
    home = os.path.realpath(paths.home)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        name = program_name(proc.info["cmdline"] or [])
        if name is None or proc.pid == os.getpid():
            continue
        try:
            if _alive(proc) and home_of(proc.environ(), proc.cwd()) == home:
                found.append(Found(name, proc))
        except psutil.Error:
            pass  # gone meanwhile, or another user's
    return sorted(found, key=lambda f: ORDER.index(f.name))


def program_name(cmdline: list[str]) -> str | None:
    """`python [options] -m manager` -> "manager"; anything else (`pytest -m gateway` too) -> None."""
    if "-m" not in cmdline[1:]:
        return None
    at = cmdline.index("-m", 1)
    if at + 1 >= len(cmdline) or not all(arg.startswith("-") for arg in cmdline[1:at]):
        return None
    return MODULES.get(cmdline[at + 1])


def home_of(env: dict[str, str], cwd: str) -> str:
    """The home a process with this environment uses, as manager.config.home_dir() would see it."""
    raw = env.get("LMFORGE_HOME") or "~/.lmforge"
    if raw == "~" or raw.startswith("~/"):
        raw = env.get("HOME", "~") + raw[1:]
    return os.path.realpath(os.path.join(cwd, raw))


def find_engines(paths: Paths) -> list[Found]:
    """Engines whose records still name them (stale records are dropped on the way)."""
    found = []
    for _, data in recorded_engines(paths.engine_pids):
        try:
            found.append(Found("engine", psutil.Process(int(data["pid"]))))  # type: ignore[call-overload]
        except psutil.Error:
            pass  # exited meanwhile
    return found


def stop(paths: Paths, *, manager_wait: float = MANAGER_WAIT_S, program_wait: float = PROGRAM_WAIT_S,
         kill_wait: float = KILL_WAIT_S) -> list[Stopped]:
    """SIGTERM the manager first, so that its graceful path stops its engines, then the other programs, each
    with a bounded wait; then SIGKILL whatever is left, engines included. Returns what was running."""
    programs, engines = find_programs(paths), find_engines(paths)
    managers = [f for f in programs if f.name == "manager"]
    others = [f for f in programs if f.name != "manager"]
    for group, wait in ((managers, manager_wait), (others, program_wait)):
        for f in group:
            _signal(f.proc, signal.SIGTERM)
        _wait_gone(group, wait)
    # A manager that was stopping may have recorded an engine after the first look.
    engines += [f for f in find_engines(paths) if f.pid not in {e.pid for e in engines}]
    stubborn = [f for f in programs + engines if _alive(f.proc)]
    for f in stubborn:
        _kill(f)
    _wait_gone(stubborn, kill_wait)
    recorded_engines(paths.engine_pids)  # drops the records of what just went
    return [Stopped(f.name, f.pid, killed=f in stubborn) for f in programs + engines]


def describe(items: Sequence[Found | Stopped]) -> str:
    """`manager 101, gateway 102, engine 103 (SIGKILL)`: for the CLI's one-line reports."""
    return ", ".join(f"{i.name} {i.pid}" + (" (SIGKILL)" if isinstance(i, Stopped) and i.killed else "")
                     for i in items)


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)  # psutil refuses a pid that now names another process
    except psutil.Error:
        pass


def _kill(found: Found) -> None:
    if found.name == "engine":
        kill_group(found.pid)  # an engine leads its own process group, with whatever helpers it started
    else:
        _signal(found.proc, signal.SIGKILL)


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie: a process that exited under a parent that has not reaped it is gone."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(found: list[Found], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(f.proc) for f in found) and time.monotonic() < deadline:
        time.sleep(0.05)  # poll: these are not our children, so there is no exit to wait on
