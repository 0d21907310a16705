"""QueuedStream: a streamed answer that starts while its request waits in its model's queue.

A request the manager grants at once (the common case) is answered exactly as
before, its errors before the stream with their own HTTP status. One queued
behind busy engine slots starts its 200 stream when the first queue event names
it, and tells its client where it stands in SSE comment lines (`: queued, 2
ahead`), which every SSE client skips; from then on a failure, the acquire's own
included, ends the stream with the dialect's error frame. A request waiting for
its model to load is not started early (a failed load stays a 503, as it was),
unless its client asked to be told the load's progress (progress.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from aiohttp import web

from gateway.dataplane import progress
from gateway.errors import ApiError
from gateway.request_log import record_of
from manager.client import QueueSpot
from manager.protocol import SlotKind


class QueuedStream:
    """One streamed request's wait; `failure(err)` is its dialect's frame that ends a stream with an error.

    `progress(note)`, given only when the client asked for load progress (gateway/dataplane/progress.py), is its
    dialect's frame for a load note; with it, a cold model's wait starts the stream too. `queue_notes` False:
    a dialect whose stream has no comment lines (Ollama's NDJSON) is not started by a queue wait."""

    def __init__(self, request: web.Request, headers: dict[str, str], failure: Callable[[ApiError], bytes], *,
                 progress: Callable[[dict[str, Any]], bytes] | None = None, queue_notes: bool = True) -> None:
        self.request = request
        self.headers = dict(headers)
        self.failure = failure
        self.progress = progress
        self.queue_notes = queue_notes
        self.response: web.StreamResponse | None = None  # once started
        self._spots: asyncio.Queue[QueueSpot | dict[str, Any] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._told = -1  # the place last told to the client

    def heard(self, spot: QueueSpot) -> None:
        """Where the acquire stands now; called by the manager client's event reader, so it only hands over."""
        if not self.queue_notes or (spot.loading and self.response is None):
            return  # a cold model's wait: answered as it always was, or told by load notes
        self._hand(spot)

    def follow(self, model: str, kind: SlotKind) -> None:
        """Tell the client how its model's load goes, when it asked to be told."""
        if self.progress is not None:
            self._follower = progress.start_following(self.request, model, kind, self._hand)

    def _hand(self, item: QueueSpot | dict[str, Any]) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        self._spots.put_nowait(item)

    async def _write(self) -> None:
        while (item := await self._spots.get()) is not None:
            if self.response is None:
                self.response = web.StreamResponse(headers=self.headers)
                await self.response.prepare(self.request)
            if isinstance(item, dict):
                assert self.progress is not None
                await self.response.write(self.progress(item))
            elif item.ahead != self._told:
                self._told = item.ahead
                await self.response.write(b": queued, %d ahead\n\n" % item.ahead)

    async def settled(self) -> web.StreamResponse | None:
        """The wait is over (granted or refused): nothing more is told. The response, if it started."""
        await progress.stop_following(self._follower)
        self._follower = None
        if self._writer is not None:
            writer, self._writer = self._writer, None
            self._spots.put_nowait(None)
            await writer  # a client that left raises here, as it would on the stream's next write
        return self.response

    async def fail(self, err: ApiError) -> web.StreamResponse:
        """End the started stream with the error, in the dialect's own frame."""
        assert self.response is not None
        record = record_of(self.request)
        record.failed(0, err.message, err.code)  # the stream had started with 200: the outcome tells
        record.outcome = "error"
        await self.response.write(self.failure(err))
        await self.response.write_eof()
        return self.response

    def close(self) -> None:
        """The handler is done, or was cancelled (its client left) while a comment was on its way."""
        if self._follower is not None:
            self._follower.cancel()
        if (writer := self._writer) is not None:
            writer.cancel()
            writer.add_done_callback(lambda done: done.cancelled() or done.exception())  # a reset client: retrieved
