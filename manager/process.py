"""EngineProcess: one engine subprocess, from spawn to the last signal.

Each engine runs in its own process group with a parent-death signal, its pid is
recorded on disk so a restarted manager can sweep leftovers, and stopping is
SIGTERM to the group, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import psutil

log = logging.getLogger("lmforge.process")

_PR_SET_PDEATHSIG = 1
# Loaded once here: loading it in the child, between fork and exec, costs ~2.5 ms a spawn.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
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
        return "no exit status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died before prctl took effect.
        if os.getppid() != parent_pid:
            os._exit(1)


class EngineProcess:
    """A running engine. Only the manager's loop and its tasks touch it."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path, record: Path) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self._exit = asyncio.ensure_future(proc.wait())
        self._exit.add_done_callback(lambda _: record.unlink(missing_ok=True))
        self._stopping: asyncio.Task[None] | None = None

    @classmethod
    async def spawn(
        cls, argv: list[str], *, log_path: Path, pid_dir: Path, env: dict[str, str] | None = None
    ) -> "EngineProcess":
        log_path.parent.mkdir(parents=True, exist_ok=True)
        pid_dir.mkdir(parents=True, exist_ok=True)
        parent = os.getpid()
        # ggml prints an assert's backtrace through gdb when gdb exists: slow, and it
        # pushes the assert line itself out of the stderr tail we report.
        env = dict(env if env is not None else os.environ, GGML_NO_BACKTRACE="1")
        with log_path.open("ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,  # own process group: one killpg reaches it all
                preexec_fn=lambda: _die_with_parent(parent),
            )
        record = pid_dir / f"{proc.pid}.json"
        record.write_text(json.dumps({"pid": proc.pid, "argv0": argv[0], "started": _create_time(proc.pid)}))
        log.info("spawned pid %d: %s", proc.pid, " ".join(argv))
        return cls(proc, log_path, record)

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

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
            if self.returncode is not None:
                raise EngineExited(self.returncode, self.tail())
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
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
        if self.returncode is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._exit), grace)
            except asyncio.TimeoutError:
                # llama-server waits for open client connections on SIGTERM.
                log.info("pid %d ignored SIGTERM for %.1fs; sending SIGKILL", self.pid, grace)
        _signal_group(self.pid, signal.SIGKILL)  # also reaps helpers left in the group
        await self.wait()


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


def sweep_recorded(pid_dir: Path) -> list[int]:
    """Kill engines a previous manager left behind; return their pids.

    A record is trusted only while the pid still names the process it recorded
    (same start time), so a recycled pid is never killed.
    """
    killed = []
    for record in sorted(pid_dir.glob("*.json")) if pid_dir.exists() else []:
        try:
            data = json.loads(record.read_text())
            proc = psutil.Process(int(data["pid"]))
            if abs(proc.create_time() - float(data["started"])) < 1.0:
                _signal_group(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
        except (psutil.Error, ValueError, KeyError, OSError):
            pass
        record.unlink(missing_ok=True)
    return killed


def group_memory(pid: int) -> tuple[int, int] | None:
    """(resident, private) bytes of an engine and its children.

    Private memory (resident less file-backed and shared pages) is what the free
    RAM figure lost to the engine; mapped model weights stay reclaimable cache.
    """
    try:
        proc = psutil.Process(pid)
        infos = [p.memory_info() for p in (proc, *proc.children(recursive=True))]
    except psutil.Error:
        return None
    rss = sum(i.rss for i in infos)
    shared = sum(getattr(i, "shared", 0) for i in infos)
    return rss, max(0, rss - shared)
