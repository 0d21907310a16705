"""EngineRunner: the one task that owns an engine process, from spawn to exit.

It never touches the slot table; it posts what happened (spawned, how the load
goes as its LoadWatch sees it, ready, failed, stopped) to the manager's inbox,
and stops the engine when the slot's stop_event is set.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp

from manager.load_watch import LoadWatch, WatchConfig, log_size, stall_message
from manager.process import EngineExited, EngineProcess, EngineTimeout, answers_health, describe_exit, note_in_record
from manager.protocol import Severity
from manager.slots import SlotKey, label

log = logging.getLogger("lmforge.runner")

# An engine using at least this share of one core between two probes is computing,
# not hung: an idle llama-server uses next to nothing.
BUSY_CPU_SHARE = 0.2


@dataclass(frozen=True)
class EngineSpawned:
    key: SlotKey
    generation: int
    pid: int
    port: int


@dataclass(frozen=True)
class EngineProgress:
    """A loading engine moved on: a new stage, or more of its weights in memory (load_watch.py)."""

    key: SlotKey
    generation: int
    stage: str
    progress: float | None
    detail: str


@dataclass(frozen=True)
class EngineReady:
    key: SlotKey
    generation: int


@dataclass(frozen=True)
class EngineFailed:
    key: SlotKey
    generation: int
    message: str
    severity: Severity
    tail: str = ""


@dataclass(frozen=True)
class EngineStopped:
    key: SlotKey
    generation: int


@dataclass(frozen=True)
class EngineTurned:
    """The engine parked (released its GPU memory, process kept) or resumed, as its slot asked (table_parking.py)."""

    key: SlotKey
    generation: int
    turn: str  # "park" or "resume"


class LoadFailure(Exception):
    def __init__(self, message: str, severity: Severity, tail: str = "") -> None:
        super().__init__(message)
        self.severity = severity
        self.tail = tail


@dataclass(frozen=True)
class RunnerConfig:
    # The outer bound from spawn to healthy, even for a load that keeps progressing; one that stands still
    # is stopped sooner, after its stall window (watch.stall_s).
    load_timeout_s: float
    stop_grace_s: float
    health_interval_s: float
    health_failures: int
    health_path: str
    log_path: Path
    pid_dir: Path
    about: dict[str, object] | None = None  # written into the engine's record, for adoption
    watch: WatchConfig = WatchConfig()  # how its load is watched: stages, progress, stall window
    engine: str = "llama.cpp"  # the engine's name, in what is said about its failures
    # The adapter's reading of an engine that died while loading: a workaround to start again with, or None.
    workaround: Callable[[int, str, tuple[str, ...]], str | None] = lambda code, tail, applied: None
    # An engine that parks (SGLang): the calls that release and take back its GPU memory, and the health path it
    # answers while parked without generating (its health_path generates, which a parked engine must not).
    turns: dict[str, Callable[[aiohttp.ClientSession, str], Awaitable[None]]] | None = None
    parked_health_path: str = ""


@dataclass(frozen=True)
class Launch:
    """How to start an engine: its argv, and the variables set on top of the manager's environment."""

    argv: list[str]
    env: dict[str, str]


Command = Callable[[int, tuple[str, ...]], Awaitable[Launch]]  # (port, workarounds) -> how to start it


class EngineRunner:
    """Runs one slot generation's engine; see the module docstring."""

    def __init__(
        self, key: SlotKey, generation: int, command: Command | None, config: RunnerConfig,
        session: aiohttp.ClientSession, stop_event: asyncio.Event, post: Callable[[object], None],
        turns: asyncio.Queue[str] | None = None,
    ) -> None:
        self.key, self.generation = key, generation
        self.command, self.config, self.session = command, config, session
        self.stop_event, self.post = stop_event, post
        self.turns: asyncio.Queue[str] = turns or asyncio.Queue()  # "park" / "resume", asked by the slot
        self.parked = False
        self.proc: EngineProcess | None = None

    async def run(self, adopted_port: int | None = None) -> None:
        """Start the engine and supervise it; with `adopted_port`, supervise `self.proc`, already ready."""
        try:
            port = adopted_port or await self._start()
            if port is None:
                self.post(EngineStopped(self.key, self.generation))
                return
            if adopted_port is None:
                self.post(EngineReady(self.key, self.generation))
            failure = await self._supervise(port)
        except LoadFailure as exc:
            self.post(EngineFailed(self.key, self.generation, str(exc), exc.severity, exc.tail))
            return
        except asyncio.CancelledError:
            if self.proc is not None:
                await asyncio.shield(self.proc.stop(self.config.stop_grace_s))
            raise
        except Exception as exc:  # a bug in us: report it instead of leaving the slot hanging
            log.exception("engine runner for %s failed", self.key)
            if self.proc is not None:
                await self.proc.stop(0)
            self.post(EngineFailed(self.key, self.generation, f"internal error: {exc}", Severity.ENGINE_BUG))
            return
        self.post(failure or EngineStopped(self.key, self.generation))

    async def _start(self) -> int | None:
        """Spawn and wait until healthy; None if a stop was asked for meanwhile."""
        assert self.command is not None
        workarounds: tuple[str, ...] = ()
        for _attempt in range(3):
            port = free_port()
            launch = await self.command(port, workarounds)
            about = {**(self.config.about or {}), "port": port}
            offset = await asyncio.to_thread(log_size, self.config.log_path)  # the watch reads what follows
            env = {**os.environ, **launch.env} if launch.env else None
            self.proc = proc = await EngineProcess.spawn(
                launch.argv, log_path=self.config.log_path, pid_dir=self.config.pid_dir, env=env, about=about
            )
            self.post(EngineSpawned(self.key, self.generation, proc.pid, port))
            watch = LoadWatch(proc.pid, self.config.log_path, offset, self.config.watch, self._progressed)
            try:
                if not await self._until_healthy(proc, port, watch):
                    return None
                return port
            except EngineExited as exc:
                if (fix := self.config.workaround(exc.returncode, exc.tail, workarounds)) is not None:
                    log.warning("%s died while loading (%s); starting again with the workaround %s", self.key,
                                describe_exit(exc.returncode), fix)
                    workarounds += (fix,)
                    continue
                if "bind" in exc.tail.lower() and "address" in exc.tail.lower():
                    continue  # another process took the port between our probe and its bind
                raise load_failure(exc, self.config.engine) from None
            except EngineTimeout as exc:
                await proc.stop(0)
                raise LoadFailure(
                    f"{exc}; raise load_timeout_s in config.toml if the model is just slow",
                    Severity.TRANSIENT, proc.tail(),
                ) from None
        raise LoadFailure("engine could not bind a port after 3 tries", Severity.TRANSIENT)

    async def _until_healthy(self, proc: EngineProcess, port: int, watch: LoadWatch) -> bool:
        """Wait until the engine answers its health check (True) or a stop is asked for (False, engine stopped).

        Raises EngineExited or EngineTimeout from the health wait, and LoadFailure once the watch sees the
        load stand still for its stall window (the engine is stopped first).
        """
        url = f"http://127.0.0.1:{port}{self.config.health_path}"
        healthy = asyncio.ensure_future(proc.wait_healthy(self.session, url, self.config.load_timeout_s))
        stop = asyncio.ensure_future(self.stop_event.wait())
        watching = asyncio.ensure_future(watch.run())
        try:
            done, _ = await asyncio.wait([healthy, stop, watching], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (healthy, stop, watching):
                task.cancel()
        if self.stop_event.is_set():
            await proc.stop(self.config.stop_grace_s)
            return False
        if healthy in done:
            healthy.result()
            await watch.look()  # the stages its log shows up to now are told before ready is
            return True
        await proc.stop(0)
        message = stall_message(label(*self.key), self.config.log_path.stem, watching.result())
        raise LoadFailure(message, Severity.TRANSIENT, proc.tail())

    def _progressed(self, stage: str, progress: float | None, detail: str) -> None:
        self.post(EngineProgress(self.key, self.generation, stage, progress, detail))

    async def _supervise(self, port: int) -> EngineFailed | None:
        """Wait for a stop request, an exit, or a run of failed health probes.

        A probe that fails while the engine's CPU time still grows is not a hang: a
        busy engine on a small machine can be slow to answer /health while its
        requests still stream tokens.
        """
        assert self.proc is not None
        proc, failures = self.proc, 0
        cpu, at = await asyncio.to_thread(proc.cpu_seconds), time.monotonic()
        while True:
            exited = asyncio.ensure_future(proc.wait())
            stop = asyncio.ensure_future(self.stop_event.wait())
            turn = asyncio.ensure_future(self.turns.get())
            await asyncio.wait([exited, stop, turn], timeout=self.config.health_interval_s,
                               return_when=asyncio.FIRST_COMPLETED)
            for task in (exited, stop, turn):
                task.cancel()
            if self.stop_event.is_set():
                await proc.stop(self.config.stop_grace_s)
                return None
            if proc.exited:
                return self._failed(f"engine died ({describe_exit(proc.returncode)})", proc)
            if turn.done() and not turn.cancelled() and (broke := await self._turn(turn.result(), port)):
                await proc.stop(0)
                return self._failed(broke, proc)
            path = self.config.parked_health_path if self.parked else self.config.health_path
            healthy = await self._probe(f"http://127.0.0.1:{port}{path}")
            (before, since), (cpu, at) = (cpu, at), (await asyncio.to_thread(proc.cpu_seconds), time.monotonic())
            working = before is not None and cpu is not None and cpu - before >= BUSY_CPU_SHARE * (at - since)
            failures = 0 if healthy or working else failures + 1
            if failures >= self.config.health_failures:
                await proc.stop(0)
                return self._failed(f"engine stopped answering its health probe ({failures} in a row); killed it", proc)

    async def _turn(self, turn: str, port: int) -> str:
        """Park or resume the engine, between two health probes (one that generates must never meet a park):
        "" when done (reported), else why it failed."""
        assert self.config.turns is not None and self.proc is not None, "a turn asked of an engine that does not park"
        self.parked = True  # from the park's start to the resume's end, probes do not generate
        # A record that says "parked" is never adopted by a later manager: its health path would generate. It says
        # so from a park's start to a resume's end.
        if turn == "park":
            await asyncio.to_thread(note_in_record, self.proc.record, parked=True)
        call = asyncio.ensure_future(self.config.turns[turn](self.session, f"http://127.0.0.1:{port}"))
        stop = asyncio.ensure_future(self.stop_event.wait())
        await asyncio.wait([call, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not call.done():  # an unload or a shutdown does not wait for a park: the engine stops anyway
            call.cancel()
            return ""
        if (exc := call.exception()) is not None:  # its adapter's error, said plainly; the engine is stopped
            return f"the engine could not {turn}: {exc}"
        self.parked = turn == "park"
        if not self.parked:
            await asyncio.to_thread(note_in_record, self.proc.record, parked=False)
        self.post(EngineTurned(self.key, self.generation, turn))
        return ""

    async def _probe(self, url: str) -> bool:
        return await answers_health(self.session, url, max(self.config.health_interval_s, 2.0))

    def _failed(self, message: str, proc: EngineProcess) -> EngineFailed:
        severity = Severity.CPU_FEATURES if proc.returncode == -signal.SIGILL else Severity.TRANSIENT
        return EngineFailed(self.key, self.generation, message, severity, proc.tail())


def load_failure(exc: EngineExited, engine: str = "llama.cpp") -> LoadFailure:
    """Name the cause of an engine that died while loading, from its exit and last lines."""
    code, tail = exc.returncode, exc.tail
    if code == -signal.SIGILL:
        return LoadFailure(
            f"{engine} died of SIGILL: its build uses CPU instructions this machine traps "
            f"(a CPU-feature mismatch). Rebuild it: lmforge engine install {engine} --rebuild",
            Severity.CPU_FEATURES, tail,
        )
    if code == -signal.SIGKILL:
        return LoadFailure("engine was killed while loading (out of memory?)", Severity.TRANSIENT, tail)
    # The same binary serves other models, so an engine that gives up while loading
    # one (an exit, an assert's SIGABRT) is taken to be refusing that model's file.
    # Reading its output for clues would race llama-server's async logger, whose
    # last lines are lost when it aborts.
    reason = key_line(tail)
    return LoadFailure(f"engine exited with {describe_exit(code)} while loading: {reason}",
                       Severity.USER_ERROR, tail)


def key_line(tail: str) -> str:
    """The line of an engine's output most likely to say what went wrong."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for marker in ("error", "failed", "exception", "what()"):
        hits = [line for line in lines if marker in line.lower()]
        if hits:
            return hits[0][:300]
    return lines[-1][:300] if lines else "no output"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
