"""POST /api/chat and /api/generate: checked, gated, translated, streamed back as NDJSON (the default).

The engine is always streamed from; a non-streamed answer is collected from the
same events. A request with nothing to say (no messages, an empty prompt) is
Ollama's way to load a model, or, with `keep_alive: 0`, to unload it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from gateway.api.ollama import codec
from gateway.api.ollama.details import can_insert, header
from gateway.api.ollama.frames import Frames, FrameStream
from gateway.api.ollama.infill import infill_events
from gateway.dataplane import progress, respond
from gateway.dataplane.engine import Engine, Events, with_engine
from gateway.dataplane.gates import require_kind, require_vision
from gateway.dataplane.model import ChatRequest, TextRequest, engine_body
from gateway.dataplane.queued import QueuedStream
from gateway.errors import ApiError
from gateway.keys import LIVE, MANAGER
from gateway.preflight.images import preflight
from gateway.thinking.intent import read_intent, with_thinking
from gateway.thinking.workflow import chat_events
from manager.keepalive import parse_keep_alive
from manager.protocol import ModelEntry, SlotKind, UnloadRequest

log = logging.getLogger("lmforge.gateway")

Opener = Callable[[Engine], Awaitable[Events]]


async def chat(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter_ns()
    body, entry = await codec.read_request(request)
    frames = Frames(body["model"], chat=True, started_ns=started)
    if not body.get("messages"):
        return await load_or_unload(request, entry, body, frames)
    require_kind(entry, SlotKind.CHAT)
    require_vision(entry, body["messages"])
    req = thinking(request, entry, body, codec.chat_request(entry, body))
    await preflight(request, req.messages)
    return await answer(request, req, frames, body, _chat_call(req, body))


async def generate(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter_ns()
    body, entry = await codec.read_request(request)
    frames = Frames(body["model"], chat=False, started_ns=started)
    for ignored in ("template", "context"):
        if body.get(ignored):
            log.info("ollama generate: %s ignored (the model's own chat template is used)", ignored)
    if not body.get("prompt") and not body.get("suffix"):
        return await load_or_unload(request, entry, body, frames)
    require_kind(entry, SlotKind.CHAT)
    require_vision(entry, [{"images": body.get("images")}])
    as_text = body.get("suffix") or body.get("raw") or not entry.chat_template
    if as_text and body.get("images"):
        why = (f"model {entry.name!r} has none" if not entry.chat_template
               else "send them without raw or suffix")
        raise ApiError(400, f"images go through the model's chat template: {why}", param="images",
                       code="invalid_request")
    if body.get("suffix"):
        await require_insert(entry)
        req = codec.text_request(entry, body)
        return await answer(request, req, frames, body, lambda engine: infill_events(engine, req))
    if as_text:
        req = codec.text_request(entry, body)
        return await answer(request, req, frames, body, _text_call(req))
    chat_req = thinking(request, entry, body, codec.generate_chat_request(entry, body))
    await preflight(request, chat_req.messages, param="images")
    return await answer(request, chat_req, frames, body, _chat_call(chat_req, body))


def thinking(request: web.Request, entry: ModelEntry, body: dict[str, Any], req: ChatRequest) -> ChatRequest:
    """The thinking contract on `req`; `think` on a model that cannot think is Ollama's 400."""
    intent = read_intent(body)
    if body.get("think") and not entry.thinking:
        raise ApiError(400, f'"{body["model"]}" does not support thinking', param="think", code="not_supported")
    return with_thinking(req, intent, entry, request.app[LIVE].current)


def _chat_call(req: ChatRequest, body: dict[str, Any]) -> Opener:
    streamed = body.get("stream", True) is not False
    return lambda engine: chat_events(engine, engine_body(req), plan=req.thinking, split=req.split_tags,
                                      streamed=streamed)


def _text_call(req: TextRequest) -> Opener:
    return lambda engine: engine.events("/v1/completions", engine_body(req))


async def require_insert(entry: ModelEntry) -> None:
    info = await header(entry)
    if info is None or not can_insert(info):
        raise ApiError(400, f"model {entry.name!r} does not support insert (suffix): its GGUF has no "
                       "fill-in-the-middle tokens", param="suffix", code="model_not_supported")


async def answer(request: web.Request, req: ChatRequest | TextRequest, frames: Frames, body: dict[str, Any],
                 open_events: Opener) -> web.StreamResponse:
    stream = body.get("stream", True)
    queued = None
    if stream and progress.wanted(request):  # the stream starts while the model loads: its status lines say how
        queued = QueuedStream(request, {"Content-Type": codec.NDJSON}, lambda err: frames.error(err.message),
                              progress=frames.status, queue_notes=False)

    async def work(engine: Engine) -> web.StreamResponse:
        events = await open_events(engine)
        if stream:
            return await respond.stream(request, engine, events, FrameStream(frames, engine.lease.load_s),
                                        {"Content-Type": codec.NDJSON})
        done = await respond.whole(events)
        return web.Response(body=frames.whole(done, engine.lease.load_s), content_type="application/json",
                            headers={"X-Request-Id": engine.trace})

    return await with_engine(request, work, model=req.model, kind=SlotKind.CHAT, keep_alive=req.keep_alive,
                             num_ctx=req.num_ctx, queued=queued)


async def load_or_unload(request: web.Request, entry: ModelEntry, body: dict[str, Any],
                         frames: Frames) -> web.Response:
    """Ollama's empty request: load the model (nothing else), or unload it when keep_alive is 0."""
    keep_alive = body.get("keep_alive")
    if keep_alive is not None and parse_keep_alive(keep_alive) == 0:  # checked already: it parses
        await request.app[MANAGER].request(UnloadRequest, model=entry.name)
        return web.Response(body=frames.bare("unload"), content_type="application/json")
    kind = SlotKind.CHAT if SlotKind.CHAT in entry.kinds else entry.kinds[0]
    _, num_ctx, _ = codec.options(body.get("options") or {})
    await load(request, entry, kind, body, num_ctx=num_ctx)
    return web.Response(body=frames.bare("load"), content_type="application/json")


async def load(request: web.Request, entry: ModelEntry, kind: SlotKind, body: dict[str, Any],
               num_ctx: int = 0) -> float:
    """Load `entry` for `kind` and nothing else (Ollama's request with nothing to say); the seconds it took."""
    async def loaded(engine: Engine) -> float:
        return engine.lease.load_s

    return await with_engine(request, loaded, model=entry.name, kind=kind, keep_alive=body.get("keep_alive"),
                             num_ctx=num_ctx)
