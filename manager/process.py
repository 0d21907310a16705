"""EngineProcess: one engine subprocess, from spawn (or adoption) to the last signal.

Each engine runs in its own process group, and is recorded on disk (pid, start
time, port, model) so that a manager restarted after a crash can adopt it: engines
outlive the manager alone, never LMForge (see manager/DESIGN.md). Stopping is
SIGTERM to the group, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import aiohttp
import psutil

log = logging.getLogger("lmforge.process")

TAIL_LINES = 32
TAIL_BYTES = 8192


class EngineExited(Exception):
    """The engine process ended; `tail` holds the last lines it wrote."""

    def __init__(self, returncode: int | None, tail: str) -> None:
        super().__init__(f"engine exited with {describe_exit(returncode)}")
        self.returncode = returncode
        self.tail = tail


class EngineTimeout(Exception):
    """The engine did not become healthy within its load timeout."""


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "an unknown exit status (an adopted engine is not our child)"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class EngineProcess:
    """A running engine. Only the manager's loop and its tasks touch it."""

    def __init__(self, pid: int, exit: "asyncio.Future[int | None]", log_path: Path, record: Path) -> None:
        self.pid = pid
        self.log_path = log_path
        self._exit = exit
        self.record = record
        self._exit.add_done_callback(lambda _: record.unlink(missing_ok=True))
        self._stopping: asyncio.Task[None] | None = None

    @classmethod
    async def spawn(
        cls, argv: list[str], *, log_path: Path, pid_dir: Path, env: dict[str, str] | None = None,
        about: dict[str, object] | None = None,
    ) -> "EngineProcess":
        """Start `argv` in its own process group; `about` goes into its record for a later adoption."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        pid_dir.mkdir(parents=True, exist_ok=True)
        # ggml prints an assert's backtrace through gdb when gdb exists: slow, and it
        # pushes the assert line itself out of the stderr tail we report.
        env = dict(env if env is not None else os.environ, GGML_NO_BACKTRACE="1")
        def start() -> subprocess.Popen[bytes]:
            with log_path.open("ab") as out:
                out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
                out.flush()
                # Own process group, so one killpg reaches it all, and no parent-death
                # signal: the engine outlives a manager crash and is adopted.
                return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                        start_new_session=True)

        # In a thread: a spawn waits until the child has exec'd, which on a busy
        # machine can take long enough to stall the manager's loop.
        proc = await asyncio.to_thread(start)
        record = pid_dir / f"{proc.pid}.json"
        data = {"pid": proc.pid, "argv0": argv[0], "started": _create_time(proc.pid), "log": str(log_path),
                **(about or {})}
        await asyncio.to_thread(_write_record, record, json.dumps(data))
        log.info("spawned pid %d: %s", proc.pid, " ".join(argv))
        return cls(proc.pid, _watch_exit(proc.wait), log_path, record)

    @classmethod
    def attach(cls, pid: int, log_path: Path, record: Path) -> "EngineProcess":
        """An engine started by an earlier manager: not our child, so its exit status is unknown."""
        def wait() -> None:
            try:
                psutil.Process(pid).wait()
            except psutil.Error:
                pass
        return cls(pid, _watch_exit(wait), log_path, record)

    @property
    def exited(self) -> bool:
        return self._exit.done()

    @property
    def returncode(self) -> int | None:
        """The exit status once exited; None while running, and for an adopted engine (not our child)."""
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exit)

    def cpu_seconds(self) -> float | None:
        """CPU time the engine's group has used so far: it grows while the engine generates."""
        try:
            proc = psutil.Process(self.pid)
            return sum(sum(p.cpu_times()[:2]) for p in (proc, *proc.children(recursive=True)))
        except psutil.Error:
            return None

    def tail(self) -> str:
        return read_tail(self.log_path)

    async def wait_healthy(
        self, session: aiohttp.ClientSession, url: str, timeout: float
    ) -> None:
        """Poll the health URL until it answers 200, the process exits, or time runs out.

        Tiny models are ready in ~30 ms and readiness is noticed at most one poll
        late, so the poll stays at a few milliseconds (each costs ~0.3 ms).
        """
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            if self.exited:
                raise EngineExited(self.returncode, self.tail())
            if await answers_health(session, url, 2.0):
                return
            if time.monotonic() > deadline:
                raise EngineTimeout(f"engine not healthy after {timeout:.0f}s")
            await asyncio.wait([self._exit], timeout=delay)  # wake early if it dies
            delay = min(delay * 1.5, 0.005)

    async def stop(self, grace: float) -> None:
        """SIGTERM the group, wait `grace`, then SIGKILL it. Safe to call twice."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        if not self.exited:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._exit), grace)
            except asyncio.TimeoutError:
                # llama-server waits for open client connections on SIGTERM.
                log.info("pid %d ignored SIGTERM for %.1fs; sending SIGKILL", self.pid, grace)
        _signal_group(self.pid, signal.SIGKILL)  # also reaps helpers left in the group
        await self.wait()


async def answers_health(session: aiohttp.ClientSession, url: str, timeout: float,
                         headers: dict[str, str] | None = None) -> bool:
    """Whether the engine's health URL answers 200 within `timeout` (`headers`: a remote engine's key)."""
    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


def _watch_exit(wait: Callable[[], int | None]) -> "asyncio.Future[int | None]":
    """A future of `wait()`'s result, waited on in a thread of its own (one per engine, for its lifetime)."""
    loop = asyncio.get_running_loop()
    exit: asyncio.Future[int | None] = loop.create_future()

    def watch() -> None:
        code = wait()
        loop.call_soon_threadsafe(lambda: exit.done() or exit.set_result(code))

    threading.Thread(target=watch, name="engine-exit", daemon=True).start()
    return exit


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def read_tail(path: Path, lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # Only the last run's lines: spawn writes a "====" header line before each run.
    if "\n==== " in data:
        data = data.rsplit("\n==== ", 1)[-1].partition("\n")[2]
    return "\n".join(data.splitlines()[-lines:])


def note_in_record(path: Path, **fields: object) -> None:
    """Add `fields` to an engine's record (blocking: off the loop): what a later manager must know to adopt it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # the engine is gone, or its record with it
    _write_record(path, json.dumps({**data, **fields}))


def _write_record(path: Path, text: str) -> None:
    """Atomic, so a reader never sees half a record; not fsynced like the store's index, because a
    pid means nothing after a reboot and the fsync would lengthen every cold load."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def recorded_engines(pid_dir: Path) -> list[tuple[Path, dict[str, object]]]:
    """Engines an earlier manager recorded that still run; stale records are removed.

    A record is trusted only while its pid still names the process it recorded
    (same start time), so a recycled pid is never touched; an exited engine that
    nobody reaped yet (a zombie) is gone.
    """
    alive = []
    for record in sorted(pid_dir.glob("*.json")) if pid_dir.is_dir() else []:
        try:
            data = json.loads(record.read_text())
            proc = psutil.Process(int(data["pid"]))
            if abs(proc.create_time() - float(data["started"])) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append((record, data))
                continue
        except FileNotFoundError:
            continue  # its manager removed it meanwhile
        except (psutil.Error, ValueError, KeyError, OSError, TypeError):
            pass
        record.unlink(missing_ok=True)
    return alive


def kill_group(pid: int) -> None:
    _signal_group(pid, signal.SIGKILL)


def group_memory(pid: int) -> tuple[int, int] | None:
    """(resident, private) bytes of an engine and its children; see groups_memory."""
    return groups_memory([pid]).get(pid)


def groups_memory(pids: list[int]) -> dict[int, tuple[int, int]]:
    """(resident, private) bytes of each engine and its children, from one pass over the process table.

    Private memory (resident less file-backed and shared pages) is what the free
    RAM figure lost to the engine; mapped model weights stay reclaimable cache.
    psutil's children() walks every process once per call; one walk serves all.
    """
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info["ppid"], []).append(proc.pid)
    found = {}
    for pid in pids:
        if (own := _memory_info(pid)) is None:
            continue  # the engine itself is gone
        infos = [own, *(i for member in _family(pid, children) if (i := _memory_info(member)) is not None)]
        rss = sum(i.rss for i in infos)
        found[pid] = (rss, max(0, rss - sum(getattr(i, "shared", 0) for i in infos)))
    return found


def _family(pid: int, children: dict[int, list[int]]) -> list[int]:
    """Every descendant of `pid`."""
    family, todo = [], list(children.get(pid, ()))
    while todo:
        member = todo.pop()
        family.append(member)
        todo.extend(children.get(member, ()))
    return family


def _memory_info(pid: int):  # type: ignore[no-untyped-def]
    try:
        return psutil.Process(pid).memory_info()
    except psutil.Error:
        return None
