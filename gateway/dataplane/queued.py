"""QueuedStream: a streamed answer that starts while its request waits in its model's queue.

A request the manager grants at once (the common case) is answered exactly as
before, its errors before the stream with their own HTTP status. One queued
behind busy engine slots starts its 200 stream when the first queue event names
it, and tells its client where it stands in SSE comment lines (`: queued, 2
ahead`), which every SSE client skips; from then on a failure, the acquire's own
included, ends the stream with the dialect's error frame. A request waiting for
its model to load is not started early: a failed load stays a 503, as it was.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from aiohttp import web

from gateway.errors import ApiError
from manager.client import QueueSpot


class QueuedStream:
    """One streamed request's wait; `failure(err)` is its dialect's frame that ends a stream with an error."""

    def __init__(self, request: web.Request, headers: dict[str, str], failure: Callable[[ApiError], bytes]) -> None:
        self.request = request
        self.headers = dict(headers)
        self.failure = failure
        self.response: web.StreamResponse | None = None  # once started
        self._spots: asyncio.Queue[QueueSpot | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._told = -1  # the place last told to the client

    def heard(self, spot: QueueSpot) -> None:
        """Where the acquire stands now; called by the manager client's event reader, so it only hands over."""
        if spot.loading and self.response is None:
            return  # a cold model's wait: answered as it always was
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        self._spots.put_nowait(spot)

    async def _write(self) -> None:
        while (spot := await self._spots.get()) is not None:
            if self.response is None:
                self.response = web.StreamResponse(headers=self.headers)
                await self.response.prepare(self.request)
            if spot.ahead != self._told:
                self._told = spot.ahead
                await self.response.write(b": queued, %d ahead\n\n" % spot.ahead)

    async def settled(self) -> web.StreamResponse | None:
        """The wait is over (granted or refused): nothing more is told. The response, if it started."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            self._spots.put_nowait(None)
            await writer  # a client that left raises here, as it would on the stream's next write
        return self.response

    async def fail(self, err: ApiError) -> web.StreamResponse:
        """End the started stream with the error, in the dialect's own frame."""
        assert self.response is not None
        await self.response.write(self.failure(err))
        await self.response.write_eof()
        return self.response

    def close(self) -> None:
        """The handler is done, or was cancelled (its client left) while a comment was on its way."""
        if (writer := self._writer) is not None:
            writer.cancel()
            writer.add_done_callback(lambda done: done.cancelled() or done.exception())  # a reset client: retrieved
