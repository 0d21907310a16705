"""LoadWatch: how far a loading engine has got, seen from outside, and whether it still moves at all.

The stage comes from the engine's log (the lines its adapter names), the progress of its weights from the
memory it holds of them against the model's size, and a load that shows no sign of life for its stall
window is given up instead of waited out. The policy is pure (tested without processes); the watcher that the
runner starts after each spawn reads the log and the process in a worker thread, off the manager's loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import psutil

from manager.protocol import ModelEntry

log = logging.getLogger("lmforge.load")

# A load's stages, in order; the table adds how it ends ("ready", "failed", "stopped": manager/effects.py).
STAGES = ("spawned", "loading_weights", "building_context", "warming_up")
LOADING_WEIGHTS = "loading_weights"
Markers = tuple[tuple[str, str], ...]  # (text in a log line, the stage that line opens): the engine adapter's

POLL_S = 0.1  # how often the log and the process are looked at
PROGRESS_CAP = 0.99  # resident memory cannot tell the last bytes from the end: only ready is done
REPORT_STEP = 0.01  # progress is reported when it moved by this much...
REPORT_EVERY_S = 0.25  # ...at most this often; every new stage at once
# Signs of life, each against its value at the last sign: memory growing (weights paged in, buffers filled),
# bytes read through read() (a load onto a GPU without mmap reads its weights through one reused staging
# buffer, so its memory stays flat), CPU time (a step that computes without writing a line, such as a large
# model's warm-up run on a CPU); and any new log byte or stage.
RSS_SIGN = 4 * 1024**2
READ_SIGN = 1024**2
CPU_SIGN_S = 0.5
READ_MAX = 1024**2  # log bytes read per look at most: a flood is read over several looks
GB = 1e9
MiB = 1024**2


# --- policy (pure) ---


def stages_in(lines: Iterable[str], current: str, markers: Markers) -> list[str]:
    """The stages that `lines` open after `current`, in order; a load never goes back to an earlier one."""
    entered = []
    for line in lines:
        for text, stage in markers:
            if text in line and stage in STAGES and STAGES.index(stage) > STAGES.index(current):
                entered.append(stage)
                current = stage
                break
    return entered


def weights_progress(held: int | None, weight_bytes: int) -> float | None:
    """The share of its weights an engine holds in memory (`held`: see Signs.weights); None when either is
    unknown. Below 1 (PROGRESS_CAP) until the load is ready."""
    if held is None or weight_bytes <= 0:
        return None
    return min(PROGRESS_CAP, max(0, held) / weight_bytes)


def stall_window(base_s: float, per_gb_s: float, size_bytes: int) -> float:
    """How long a load of a model of `size_bytes` may show no sign of life: load_stall_s plus
    load_stall_s_per_gb for each GB it reads; 0 (never stopped) when load_stall_s is 0."""
    return 0.0 if base_s <= 0 else base_s + per_gb_s * size_bytes / GB


@dataclass(frozen=True)
class Signs:
    """What one look at a loading engine saw; None where the platform does not tell."""

    log_bytes: int = 0  # its log's growth since the spawn
    rss: int | None = None
    mapped: int | None = None  # the resident part of its mapped files (Linux), the weights' pages among them
    read_bytes: int | None = None  # through read(), from the page cache or the disk
    cpu_s: float | None = None

    def weights(self, mapped_at_spawn: int | None) -> int | None:
        """How much of its weights the engine holds: the pages of the file it mapped (llama-server's default)
        that are resident, counted from the spawn (its own binary is mapped too); else its resident memory.
        Resident memory, because a file already in the page cache loads without a single disk read, so bytes
        read would not do; mapped pages, because the rest of it grows first (Gemma 3 270M's vocabulary and
        buffers came to a quarter of its weights before the first weight was in)."""
        if self.mapped is not None and mapped_at_spawn is not None:
            return self.mapped - mapped_at_spawn
        return self.rss


def _grew(before: float | None, now: float | None, by: float) -> bool:
    return before is not None and now is not None and now - before >= by


def moved(before: Signs, now: Signs) -> bool:
    """Whether the engine did anything between two looks that a load in progress does."""
    return (now.log_bytes > before.log_bytes or _grew(before.rss, now.rss, RSS_SIGN)
            or _grew(before.read_bytes, now.read_bytes, READ_SIGN) or _grew(before.cpu_s, now.cpu_s, CPU_SIGN_S))


class StallClock:
    """When a load last showed a sign of life, and for how long it has been still once past its window."""

    def __init__(self, window_s: float, now: float) -> None:
        self.window_s, self.since = window_s, now
        self._marks: Signs | None = None  # the signs at the last sign of life: slow growth adds up against them

    def saw(self, signs: Signs, new_stage: bool, now: float) -> None:
        if self._marks is None or new_stage or moved(self._marks, signs):
            self._marks, self.since = signs, now

    def still_for(self, now: float) -> float | None:
        """Seconds since the last sign of life once they exceed the window; None before, or without one."""
        still = now - self.since
        return still if self.window_s > 0 and still > self.window_s else None


class ReportGate:
    """Which looks become reports: every new stage, and progress that moved by REPORT_STEP, at most every
    REPORT_EVERY_S, so a fast load does not flood the status stream."""

    def __init__(self, stage: str = "") -> None:
        self.stage, self.at = stage, float("-inf")
        self.progress: float | None = None

    def admit(self, stage: str, progress: float | None, now: float) -> bool:
        if stage == self.stage:
            if progress is None or now - self.at < REPORT_EVERY_S:
                return False
            if self.progress is not None and progress - self.progress < REPORT_STEP:
                return False
        self.stage, self.progress, self.at = stage, progress, now
        return True


@dataclass(frozen=True)
class Stalled:
    still_s: float
    stage: str
    progress: float | None


def stall_message(label: str, log_name: str, stalled: Stalled) -> str:
    share = f" ({stalled.progress:.0%})" if stalled.progress is not None else ""
    return (f"the engine for {label} made no progress for {stalled.still_s:.0f} s while {stalled.stage}{share}: "
            f"it was stopped; check `lmforge logs {log_name}` (a disk that is only slow: raise "
            "load_stall_s_per_gb in config.toml)")


# --- the watcher ---


@dataclass(frozen=True)
class WatchConfig:
    weight_bytes: int = 0  # the model's file: what its engine's resident memory is measured against
    stall_s: float = 0.0  # see stall_window; 0: a load is never stopped for standing still
    markers: Markers = ()


def watch_config(base_s: float, per_gb_s: float, entry: ModelEntry, markers: Markers) -> WatchConfig:
    return WatchConfig(entry.size_bytes, stall_window(base_s, per_gb_s, entry.size_bytes), markers)


Report = Callable[[str, "float | None", str], None]  # (stage, progress, detail)


class LogTail:
    """The whole lines appended to a log since an offset (its size at the spawn); blocking, for a thread."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path, self.offset, self.total = path, offset, 0
        self._partial = b""

    def read(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # rotated (copied, then truncated): what follows starts at 0
                    self.offset, self._partial = 0, b""
                f.seek(self.offset)
                data = f.read(READ_MAX)
        except OSError:
            return []
        self.offset += len(data)
        self.total += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        self._partial = self._partial[-READ_MAX:]
        return [line.decode("utf-8", errors="replace") for line in lines]


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class LoadWatch:
    """Watches one spawned engine until its runner cancels it; `run` returns only when the load stalled."""

    def __init__(self, pid: int, log_path: Path, offset: int, config: WatchConfig, report: Report,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pid, self.config, self.report, self.clock = pid, config, report, clock
        self.stage = STAGES[0]
        self.progress: float | None = None
        self._tail = LogTail(log_path, offset)
        self._gate = ReportGate(self.stage)  # "spawned" is the table's own report
        self._stall = StallClock(config.stall_s, clock())
        self._proc: psutil.Process | None = None
        self._mapped_at_spawn: int | None = None
        self._broken = False

    async def run(self) -> Stalled:
        while True:
            await asyncio.sleep(POLL_S)  # the poll interval of a watch from outside
            if (stalled := await self.look()) is not None:
                return stalled

    async def look(self) -> Stalled | None:
        """Read what the engine did since the last look, report it, and say whether the load has stalled."""
        if self._broken:
            return None
        try:
            return await self._look()
        except Exception:  # a bug here must not fail a load: its health wait alone decides then
            log.exception("watching the load of pid %d failed; its progress is not reported", self.pid)
            self._broken = True
            return None

    async def _look(self) -> Stalled | None:
        lines, signs = await asyncio.to_thread(self._sample)
        now = self.clock()
        entered = stages_in(lines, self.stage, self.config.markers)
        for stage in entered[:-1]:  # passed within one look: each is still told, in order
            self._gate.admit(stage, None, now)
            self.report(stage, None, "")
        self.stage = entered[-1] if entered else self.stage
        if self._mapped_at_spawn is None:
            self._mapped_at_spawn = signs.mapped
        held = signs.weights(self._mapped_at_spawn)
        share = weights_progress(held, self.config.weight_bytes) if self.stage == LOADING_WEIGHTS else None
        # Resident memory may dip for a moment; the progress shown does not.
        self.progress = None if share is None else max(self.progress or 0.0, share)
        if self._gate.admit(self.stage, self.progress, now):
            self.report(self.stage, self.progress, self._detail(held))
        self._stall.saw(signs, bool(entered), now)
        if (still := self._stall.still_for(now)) is not None:
            return Stalled(still, self.stage, self.progress)
        return None

    def _detail(self, held: int | None) -> str:
        if self.stage != LOADING_WEIGHTS or held is None or not self.config.weight_bytes:
            return ""
        return f"{max(0, held) / MiB:.0f} of {self.config.weight_bytes / MiB:.0f} MiB in memory"

    def _sample(self) -> tuple[list[str], Signs]:
        lines = self._tail.read()
        try:
            if self._proc is None:
                self._proc = psutil.Process(self.pid)
            proc = self._proc
            with proc.oneshot():
                times, memory = proc.cpu_times(), proc.memory_info()
                io = proc.io_counters() if hasattr(proc, "io_counters") else None
        except psutil.Error:
            return lines, Signs(self._tail.total)
        mapped, read = getattr(memory, "shared", None), getattr(io, "read_chars", None)
        return lines, Signs(self._tail.total, memory.rss, mapped, read, times.user + times.system)
