"""OpenAI-compatible /v1 handlers: models, chat, completions, embeddings."""

from __future__ import annotations

from aiohttp import web

from gateway.api.openai.schemas import parse_inference
from gateway.errors import OpenAIError
from gateway.keys import MANAGER
from gateway.upstream import proxy
from manager.protocol import ListModelsReply, ListModelsRequest, ModelEntry, SlotKind


async def _forward(request: web.Request, kind: SlotKind, path: str) -> web.StreamResponse:
    fields, body = parse_inference(await request.read())
    stream = fields.stream and kind != SlotKind.EMBED
    return await proxy(request, model=fields.model, kind=kind, keep_alive=fields.keep_alive,
                       path=path, body=body, stream=stream)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _forward(request, SlotKind.CHAT, "/v1/chat/completions")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _forward(request, SlotKind.CHAT, "/v1/completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _forward(request, SlotKind.EMBED, "/v1/embeddings")


def model_object(entry: ModelEntry) -> dict[str, object]:
    return {
        "id": entry.name,
        "object": "model",
        "created": int(entry.added_at),
        "owned_by": "lmforge",
        "capabilities": {
            "chat": SlotKind.CHAT in entry.kinds,
            "completion": SlotKind.CHAT in entry.kinds,
            "embeddings": SlotKind.EMBED in entry.kinds,
            "reranking": SlotKind.RERANK in entry.kinds,
        },
        "format": entry.format,
        "size_bytes": entry.size_bytes,
        "context_length": entry.context_length,
        "architecture": entry.architecture,
        "quantization": entry.quantization,
    }


async def _models(request: web.Request) -> tuple[ModelEntry, ...]:
    reply: ListModelsReply = await request.app[MANAGER].request(ListModelsRequest)
    return reply.models


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [model_object(m) for m in await _models(request)]})


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["id"]
    for entry in await _models(request):
        if entry.name == name:
            return web.json_response(model_object(entry))
    raise OpenAIError(404, f"model {name!r} is not installed", param="model", code="model_not_found")
