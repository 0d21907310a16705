"""LoopLag: how late the manager's event loop runs a timer, worst over the last minute; and
where the loop was stuck, logged by a watchdog thread when a stall goes past STALL_S."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections import deque

log = logging.getLogger("lmforge.manager")

INTERVAL_S = 0.05
WINDOW_S = 60.0
STALL_S = 0.25  # a loop that has not run its timer for this long is stuck: say where


class LoopLag:
    """A task wakes every INTERVAL_S; anything past the interval is time the loop was busy elsewhere."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (monotonic, lag seconds), lags only rise
        self._last_run = time.monotonic()

    def record(self, at: float, lag: float) -> None:
        # Keep a falling staircase: a sample older and smaller than a newer one can never be the maximum.
        while self._samples and self._samples[-1][1] <= lag:
            self._samples.pop()
        self._samples.append((at, lag))
        while self._samples and self._samples[0][0] < at - self.window_s:
            self._samples.popleft()

    def worst_ms(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        recent = [lag for at, lag in self._samples if at >= now - self.window_s]
        return max(recent, default=0.0) * 1000

    async def run(self) -> None:
        loop_thread = threading.get_ident()
        threading.Thread(target=self._watch, args=(loop_thread,), name="loop-watchdog", daemon=True).start()
        while True:
            before = time.monotonic()
            await asyncio.sleep(INTERVAL_S)
            after = self._last_run = time.monotonic()
            self.record(after, max(0.0, after - before - INTERVAL_S))

    def _watch(self, loop_thread: int) -> None:
        reported = 0.0
        while True:
            time.sleep(INTERVAL_S)  # the watchdog's own period
            last = self._last_run
            if time.monotonic() - last > STALL_S + INTERVAL_S and last != reported:
                reported = last
                frame = sys._current_frames().get(loop_thread)
                where = "".join(traceback.format_stack(frame)[-8:]) if frame else "unknown"
                log.warning("the manager loop has been stuck for over %.0f ms in:\n%s", STALL_S * 1000, where)
