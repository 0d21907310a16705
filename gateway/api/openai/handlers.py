"""OpenAI-compatible /v1 handlers: models, chat and completions (byte relay), embeddings."""

from __future__ import annotations

import base64
import struct
from typing import Any

import msgspec
from aiohttp import web

from gateway.api.openai.chat_stream import ChatStream, whole_chat
from gateway.api.openai.schemas import Relay, relay_body
from gateway.dataplane.embed import embed_inputs, embedding_inputs
from gateway.dataplane.gates import can_do, find_model, require_kind, require_vision
from gateway.dataplane.model import ChatRequest, ThinkPlan
from gateway.dataplane.respond import answer
from gateway.dataplane.validate import Rule, check, invalid, read_json, require
from gateway.errors import ApiError
from gateway.keys import LIVE, STORE
from gateway.preflight.images import preflight
from gateway.thinking.intent import has_own, plan, read_intent, without_own
from gateway.upstream import proxy
from manager.protocol import ModelEntry, SlotKind


async def _forward(request: web.Request, path: str, *, chat: bool) -> web.StreamResponse:
    relay = relay_body(await request.read(), chat=chat)
    entry = find_model(request, relay.model)
    require_kind(entry, SlotKind.CHAT)
    body = relay.raw
    if chat:
        intent = read_intent(relay.body)
        require_vision(entry, relay.body["messages"])
        changed = await preflight(request, relay.body["messages"])
        if (budget := plan(intent, entry, request.app[LIVE].current)) is not None:
            return await _think(request, entry, relay, without_own(relay.body, intent), budget)
        if changed or has_own(relay.body):
            body = msgspec.json.encode(without_own(relay.body, intent))
    return await proxy(request, model=entry.name, kind=SlotKind.CHAT, keep_alive=relay.keep_alive,
                       path=path, body=body, stream=relay.stream)


async def _think(request: web.Request, entry: ModelEntry, relay: Relay, body: dict[str, Any],
                 budget: ThinkPlan) -> web.StreamResponse:
    """A chat with a thinking budget: not relayed but served in two calls (gateway/thinking/workflow.py), and
    answered as OpenAI chunks made here."""
    if body.get("n", 1) != 1:
        raise invalid("n", "must be 1 with a thinking budget: the two calls that keep thinking within it make one "
                      "answer")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    body |= {"stream": True, "stream_options": {"include_usage": True}}  # the engine streams; usage counts both calls
    req = ChatRequest(model=entry.name, messages=[], keep_alive=relay.keep_alive, thinking=budget, split_tags=True)
    return await answer(request, req, streamed=relay.stream, body=body,
                        renderer=ChatStream(entry.name, include_usage=include_usage),
                        whole_reply=lambda done: whole_chat(done, entry.name))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/chat/completions", chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/completions", chat=False)


EMBED_RULES = {"model": Rule("str"), "encoding_format": Rule("str"), "dimensions": Rule("int", 1, 2**20),
               "user": Rule("str"), "keep_alive": Rule("duration")}


async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    check(body, EMBED_RULES)
    require(body, "model", "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format",
                       code="invalid_request")
    inputs = embedding_inputs(body["input"])
    entry = find_model(request, body["model"])
    require_kind(entry, SlotKind.EMBED)
    done = await embed_inputs(request, entry, inputs, keep_alive=body.get("keep_alive"),
                              dimensions=body.get("dimensions"))
    data = [{"object": "embedding", "index": i, "embedding": _b64(v) if encoding == "base64" else v}
            for i, v in enumerate(done.vectors)]
    reply = {"object": "list", "data": data, "model": body["model"],
             "usage": {"prompt_tokens": done.prompt_tokens, "total_tokens": done.prompt_tokens}}
    # msgspec: json.dumps of thousands of floats was most of the gateway's cost per embedding call.
    return web.Response(body=msgspec.json.encode(reply), content_type="application/json")


def _b64(vector: list[float]) -> str:
    """OpenAI's base64 form: the float32 values, little-endian."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def model_object(entry: ModelEntry) -> dict[str, object]:
    chat = SlotKind.CHAT in entry.kinds
    return {
        "id": entry.name,
        "object": "model",
        "created": int(entry.added_at),
        "owned_by": "lmforge",
        "capabilities": {
            "chat": chat,
            "completion": chat,
            "embeddings": SlotKind.EMBED in entry.kinds,
            "reranking": SlotKind.RERANK in entry.kinds,
            "tools": chat and entry.tools,
            "thinking": chat and entry.thinking,
            "vision": chat and entry.vision,
        },
        "can_do": can_do(entry),
        "format": entry.format,
        "size_bytes": entry.size_bytes,
        "context_length": entry.context_length,
        "architecture": entry.architecture,
        "quantization": entry.quantization,
    }


async def list_models(request: web.Request) -> web.Response:
    models = request.app[STORE].list()
    return web.json_response({"object": "list", "data": [model_object(m) for m in models]})


async def get_model(request: web.Request) -> web.Response:
    return web.json_response(model_object(find_model(request, request.match_info["id"])))
