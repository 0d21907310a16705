"""Anthropic's /v1/messages and /v1/messages/count_tokens, served on a leased chat engine."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from gateway.api.anthropic.codec import check_request, to_chat
from gateway.api.anthropic.render import MessageStream, whole_message
from gateway.dataplane.engine import Engine, with_engine
from gateway.dataplane.gates import find_model, require_kind, require_vision
from gateway.dataplane.model import ChatRequest, engine_body
from gateway.dataplane.respond import queued_stream, stream, whole
from gateway.dataplane.validate import read_json
from gateway.sse import SSE_HEADERS
from manager.protocol import ModelEntry, SlotKind


async def messages(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    check_request(body, "max_tokens")
    entry, req = _checked(request, body)
    asked = body["model"]
    renderer = MessageStream(asked)

    async def work(engine: Engine) -> web.StreamResponse:
        events = await engine.events("/v1/chat/completions", engine_body(req))
        if not body.get("stream"):
            return web.json_response(whole_message(await whole(events), asked), dumps=_dumps)
        return await stream(request, engine, events, renderer, SSE_HEADERS)

    queued = queued_stream(request, renderer, SSE_HEADERS) if body.get("stream") else None
    return await with_engine(request, work, model=entry.name, kind=SlotKind.CHAT, queued=queued)


async def count_tokens(request: web.Request) -> web.Response:
    """The prompt's length as the engine counts it: its own chat template, then its own tokenizer."""
    body = await read_json(request)
    check_request(body)
    entry, req = _checked(request, body)
    chat = engine_body(req, stream=False)

    async def work(engine: Engine) -> int:
        prompt = (await engine.json("/apply-template", chat))["prompt"]
        # As llama-server tokenizes a chat prompt: with BOS, special tokens parsed.
        tokens = await engine.json("/tokenize", {"content": prompt, "add_special": True, "parse_special": True})
        return len(tokens["tokens"])

    count = await with_engine(request, work, model=entry.name, kind=SlotKind.CHAT)
    return web.json_response({"input_tokens": count})


def _checked(request: web.Request, body: dict[str, Any]) -> tuple[ModelEntry, ChatRequest]:
    """The model entry and the internal request, with every gate passed before any engine work."""
    entry = find_model(request, body["model"])
    require_kind(entry, SlotKind.CHAT)
    req = to_chat(body, entry.name)
    require_vision(entry, [{"content": m.content} for m in req.messages])
    return entry, req


def _dumps(data: Any) -> str:
    return msgspec.json.encode(data).decode()
