"""Answering a client from an engine's events: whole, or streamed through a dialect's renderer.

Every translated dialect answers the same two ways. A whole answer is the
events collected (an engine failure is a 502). A streamed one is the renderer's
opening frames, then the frames of each engine read in one write, then, if the
engine broke, the renderer's error frame. One write per read, not per token:
under load many tokens arrive in one read, and each write costs a chunk header
and a send. A stream that started while its request was queued goes on in the
same response (`queued_stream`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Protocol

import msgspec
from aiohttp import web

from gateway.dataplane import progress
from gateway.dataplane.collect import Completion, collect
from gateway.dataplane.engine import Engine, EngineBroke, Events, with_engine
from gateway.dataplane.model import ChatRequest, Event, engine_body
from gateway.dataplane.queued import QueuedStream
from gateway.errors import ApiError
from gateway.sse import SSE_HEADERS
from gateway.thinking.workflow import chat_events
from manager.protocol import SlotKind


class Renderer(Protocol):
    """One streamed answer in a dialect's wire format."""

    def start(self) -> bytes: ...  # frames before the first event (b"" for none)

    def render(self, event: Event) -> bytes: ...  # frames for one event (b"" for none)

    def fail(self, message: str) -> bytes: ...  # the frame that ends a stream the engine broke


async def answer(request: web.Request, req: ChatRequest, *, streamed: bool, renderer: Renderer,
                 whole_reply: Callable[[Completion], Any], body: dict[str, Any] | None = None) -> web.StreamResponse:
    """A translated chat request answered on a leased engine: streamed through `renderer`, or whole as
    `whole_reply` of the collected events. Every gate has passed; `req.model` is the canonical name.

    `body` is the engine's body when it is the client's own OpenAI body (a /v1 chat with a thinking budget);
    otherwise it is made from `req`. A thinking budget (`req.thinking`) is served in two calls."""
    sent = engine_body(req) if body is None else body

    async def work(engine: Engine) -> web.StreamResponse:
        events = await chat_events(engine, sent, plan=req.thinking, split=req.split_tags, streamed=streamed)
        if not streamed:
            return json_reply(whole_reply(await whole(events)))
        return await stream(request, engine, events, renderer, SSE_HEADERS)

    queued = queued_stream(request, renderer, SSE_HEADERS) if streamed else None
    return await with_engine(request, work, model=req.model, kind=SlotKind.CHAT, keep_alive=req.keep_alive,
                             num_ctx=req.num_ctx, queued=queued)


def json_reply(data: Any) -> web.Response:
    """A whole JSON answer, encoded by msgspec (embeddings are long lists of floats)."""
    return web.Response(body=msgspec.json.encode(data), content_type="application/json")


async def whole(events: Events) -> Completion:
    try:
        return await collect(events)
    except EngineBroke as broke:
        raise ApiError(502, str(broke), code="engine_failed") from None


def queued_stream(request: web.Request, renderer: Renderer, headers: dict[str, str]) -> QueuedStream:
    """How a streamed answer starts while queued; a failure then opens the renderer's stream and fails it."""
    notes = None
    if progress.wanted(request):
        notes = progress.anthropic_ping if request.path.startswith("/v1/messages") else progress.sse_comment
    return QueuedStream(request, headers, lambda err: renderer.start() + renderer.fail(err.message), progress=notes)


async def stream(request: web.Request, engine: Engine, events: Events, renderer: Renderer,
                 headers: dict[str, str]) -> web.StreamResponse:
    resp = engine.response or web.StreamResponse(headers={**headers, "X-Request-Id": engine.trace})
    if not resp.prepared:
        await resp.prepare(request)
    engine.record.stream = True
    if opening := renderer.start():
        await resp.write(opening)
    async with contextlib.aclosing(events):  # closing aborts the engine's generation if the client left
        try:
            async for batch in events:
                if frames := b"".join([renderer.render(event) for event in batch]):
                    await resp.write(frames)
        except EngineBroke as broke:
            engine.record.broke(str(broke))
            await resp.write(renderer.fail(str(broke)))
    engine.record.sent(resp.status)
    await resp.write_eof()
    return resp
