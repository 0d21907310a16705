"""ProberService: keeps the manager's copy of this machine's hardware current.

A full snapshot at every (re)connect and about once a minute; in between, only the
live figures, every `interval_s`. Probing runs in a thread so the loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time

from manager.client import ManagerClient, ManagerUnavailable
from manager.config import Paths
from manager.protocol import CpuPlan, HardwareNotice, HardwareSnapshot, PeerRole
from prober.detect import refresh_live, take_snapshot
from prober.probes.nvidia import NvmlSession

log = logging.getLogger("lmforge.prober")


class ProberService:
    """Sends HardwareNotice messages to the manager until stop() is called."""

    def __init__(
        self,
        paths: Paths,
        interval_s: float = 2.0,
        *,
        full_every_s: float = 60.0,
        connect_wait_s: float = 10.0,
    ) -> None:
        self._paths = paths
        self._interval_s = interval_s
        self._full_every_s = full_every_s
        self._connect_wait_s = connect_wait_s
        self._client: ManagerClient | None = None
        self._nvml = NvmlSession()
        self._stopping = asyncio.Event()
        self._snapshot: HardwareSnapshot | None = None
        self._full_at = 0.0
        self._reachable = True  # so that only changes of reachability are logged
        self._described = ""  # so that the hardware is logged when it changes, not every minute
        self.sent = 0  # notices handed to the manager's socket

    async def run(self) -> None:
        """Connect (retrying while no manager answers), then report until stop()."""
        serve = asyncio.ensure_future(self._serve())
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({serve, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serve, stopped):
                task.cancel()
            await asyncio.gather(serve, stopped, return_exceptions=True)
            await self._close()
        if serve.done() and not serve.cancelled() and serve.exception() is not None:
            raise serve.exception()  # type: ignore[misc]

    def stop(self, reason: str = "stop requested") -> None:
        """Ask run() to finish; idempotent, and safe to call from a signal handler."""
        if self._stopping.is_set():
            return
        log.info("[shutdown] prober: %s, stopping", reason)
        self._stopping.set()

    async def _serve(self) -> None:
        await asyncio.to_thread(self._nvml.open)
        await self._take_full()
        await self._connect()
        while True:
            await asyncio.sleep(self._interval_s)
            await self._probe()
            self._send()

    async def _connect(self) -> None:
        attempts = 0
        while True:
            client = ManagerClient(self._paths, PeerRole.PROBER)
            client.on_connect(self._on_connect)
            self._client = client
            try:
                await client.start(wait=self._connect_wait_s)
            except ManagerUnavailable as exc:
                self._client = None
                await client.close()
                attempts += 1
                # The first miss is worth a warning; a manager that is slow to
                # come up should not fill the log with one line per attempt.
                level = logging.WARNING if attempts == 1 else logging.DEBUG
                log.log(level, "%s; still trying", exc)
                continue
            log.info("connected to the manager (epoch %s)", client.epoch)
            return

    async def _on_connect(self) -> None:
        # Runs after every hello, so a restarted manager learns the hardware at once.
        self._send()

    async def _take_full(self) -> None:
        self._snapshot = await asyncio.to_thread(take_snapshot)
        self._full_at = time.monotonic()
        described = _describe(self._snapshot)
        if described != self._described:
            log.info("hardware: %s", described)
            self._described = described

    async def _probe(self) -> None:
        try:
            if time.monotonic() - self._full_at >= self._full_every_s:
                await self._take_full()
            elif self._snapshot is not None:
                self._snapshot = await asyncio.to_thread(refresh_live, self._snapshot)
        except Exception:
            # A probe that breaks once (a GPU falling off the bus mid-call) must
            # not end the prober; the last good snapshot stays in use.
            log.exception("probing the hardware failed; keeping the last snapshot")

    def _send(self) -> None:
        client = self._client
        if client is None or self._snapshot is None:
            return
        # A manager that missed its heartbeats is dead or restarting: its
        # successor gets the snapshot from _on_connect, right after its hello.
        problem = None if client.alive else "the manager is not answering"
        if problem is None:
            try:
                client.notify(HardwareNotice(snapshot=self._snapshot))
            except ManagerUnavailable as exc:
                problem = str(exc)
        self._note_reachable(problem)

    def _note_reachable(self, problem: str | None) -> None:
        if problem is not None:
            if self._reachable:
                log.warning("%s; will send the hardware again when it is back", problem)
            self._reachable = False
            return
        if not self._reachable:
            log.info("the manager is back; hardware sent")
        self._reachable = True
        self.sent += 1

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        await asyncio.to_thread(self._nvml.close)
        log.info("[shutdown] prober: stopped")


def _describe(snapshot: HardwareSnapshot) -> str:
    gib = 1 << 30
    gpus = ", ".join(f"{g.name} {g.vram_total / gib:.0f} GiB" for g in snapshot.gpus) or "no GPU"
    return (
        f"{snapshot.os}/{snapshot.arch}, {snapshot.cpu_model or 'unknown CPU'} "
        f"({snapshot.cpu_cores} cores, {snapshot.cpu_threads} threads), "
        f"{snapshot.ram_total / gib:.1f} GiB RAM, {gpus}{_describe_plan(snapshot.cpu_plan)}"
    )


def _describe_plan(plan: CpuPlan | None) -> str:
    if plan is None:
        return ""
    quota = f" {plan.quota:g}" if plan.limited_by == "cgroup quota" else ""
    cores = "core" if plan.cores == 1 else "cores"
    return f", CPU plan {plan.cores} {cores} (limited by {plan.limited_by}{quota})"
