"""Anthropic's /v1/messages and /v1/messages/count_tokens, served on a leased chat engine."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.anthropic.codec import check_request, intent_of, to_chat
from gateway.api.anthropic.render import MessageStream, whole_message
from gateway.dataplane.engine import Engine, with_engine
from gateway.dataplane.gates import find_model, has_image, require_kind, require_vision
from gateway.dataplane.model import ChatRequest, engine_body
from gateway.dataplane.respond import answer, json_reply
from gateway.dataplane.validate import read_json
from gateway.keys import LIVE
from gateway.preflight.images import preflight
from gateway.thinking.intent import with_thinking
from manager.protocol import SlotKind


async def messages(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    check_request(body, "max_tokens")
    req = await _checked(request, body)
    asked = body["model"]
    return await answer(request, req, streamed=bool(body.get("stream")), renderer=MessageStream(asked),
                        whole_reply=lambda done: whole_message(done, asked))


async def count_tokens(request: web.Request) -> web.Response:
    """The prompt's length as the engine counts it: its own chat template, then its own tokenizer."""
    body = await read_json(request)
    check_request(body)
    req = await _checked(request, body)
    chat = engine_body(req, stream=False)
    seeing = any(has_image(m) for m in req.messages)

    async def work(engine: Engine) -> int:
        if seeing:  # the template writes an image as a marker, not as the tokens the projector makes of it
            reply = await engine.json("/v1/chat/completions", {**chat, "max_tokens": 1})
            return int(reply["usage"]["prompt_tokens"])
        prompt = (await engine.json("/apply-template", chat))["prompt"]
        # As llama-server tokenizes a chat prompt: with BOS, special tokens parsed.
        tokens = await engine.json("/tokenize", {"content": prompt, "add_special": True, "parse_special": True})
        return len(tokens["tokens"])

    count = await with_engine(request, work, model=req.model, kind=SlotKind.CHAT, keep_alive=req.keep_alive,
                              num_ctx=req.num_ctx)
    return json_reply({"input_tokens": count})


async def _checked(request: web.Request, body: dict[str, Any]) -> ChatRequest:
    """The internal request, with every gate passed and every image checked before any engine work."""
    entry = find_model(request, body["model"])
    require_kind(entry, SlotKind.CHAT)
    req = with_thinking(to_chat(body, entry.name), intent_of(body), entry, request.app[LIVE].current)
    require_vision(entry, req.messages)
    await preflight(request, req.messages)
    return req
