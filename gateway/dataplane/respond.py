"""Answering a client from an engine's events: whole, or streamed through a dialect's renderer.

Every translated dialect answers the same two ways. A whole answer is the
events collected (an engine failure is a 502). A streamed one is the renderer's
opening frames, then each event rendered, then, if the engine broke, the
renderer's error frame; frames queued while the loop was busy leave in one write.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator, Protocol

from aiohttp import web

from gateway.dataplane.collect import Completion, collect
from gateway.dataplane.engine import Engine, EngineBroke
from gateway.dataplane.model import Event
from gateway.dataplane.writer import FrameWriter
from gateway.errors import ApiError


class Renderer(Protocol):
    """One streamed answer in a dialect's wire format."""

    def start(self) -> bytes: ...  # frames before the first event (b"" for none)

    def render(self, event: Event) -> bytes: ...  # frames for one event (b"" for none)

    def fail(self, message: str) -> bytes: ...  # the frame that ends a stream the engine broke


async def whole(events: AsyncIterator[Event]) -> Completion:
    try:
        return await collect(events)
    except EngineBroke as broke:
        raise ApiError(502, str(broke), code="engine_failed") from None


async def stream(request: web.Request, engine: Engine, events: AsyncIterator[Event], renderer: Renderer,
                 headers: dict[str, str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={**headers, "X-Request-Id": engine.trace})
    await resp.prepare(request)
    out = FrameWriter(resp)
    try:
        if opening := renderer.start():
            await out.write(opening)
        async with contextlib.aclosing(events):  # closing aborts the engine's generation if the client left
            try:
                async for event in events:
                    if frames := renderer.render(event):
                        await out.write(frames)
            except EngineBroke as broke:
                await out.write(renderer.fail(str(broke)))
        await out.flush()
    finally:
        out.close()
    await resp.write_eof()
    return resp
