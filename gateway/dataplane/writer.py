"""Streamed frames written in batches: what the engine produced while the loop was busy goes out in one write.

A write per token costs a chunk header and a send() each: at 16 streams that
was half the gateway's work per token. Frames are queued, and a writer task
sends all that are queued whenever the loop gets to it, so a quiet stream still
sends each token at once and a busy one coalesces them.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

MAX_QUEUED = 256  # frames queued behind a slow client before the producer waits for it


class FrameWriter:
    def __init__(self, resp: web.StreamResponse) -> None:
        self.resp = resp
        self.queued: list[bytes] = []
        self.task: asyncio.Task[None] | None = None

    async def write(self, frame: bytes) -> None:
        self.queued.append(frame)
        task = self.task
        if task is None or task.done():
            if task is not None:
                task.result()  # a write that failed (the client left) ends the stream here
            self.task = asyncio.get_running_loop().create_task(self._send())
        elif len(self.queued) >= MAX_QUEUED:
            await task

    async def flush(self) -> None:
        """Everything queued is written, or the failed write's error raised."""
        if self.task is not None:
            await self.task
        await self._send()

    def close(self) -> None:
        """Stop a write still under way (the handler is leaving on an error)."""
        task = self.task
        if task is None:
            return
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # retrieved: the handler's own exception says what happened

    async def _send(self) -> None:
        while self.queued:
            data = b"".join(self.queued)
            self.queued.clear()
            await self.resp.write(data)
