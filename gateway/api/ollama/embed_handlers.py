"""POST /api/embed (batched, `input` a string or a list) and the legacy POST /api/embeddings (`prompt`)."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from gateway.api.ollama import codec
from gateway.api.ollama.chat_handlers import load
from gateway.dataplane.embed import embed_inputs, embedding_inputs
from gateway.dataplane.gates import require_kind
from gateway.dataplane.respond import json_reply
from gateway.errors import ApiError
from manager.protocol import ModelEntry, SlotKind

log = logging.getLogger("lmforge.gateway")


async def embed(request: web.Request) -> web.Response:
    started = time.perf_counter_ns()
    body, entry = await _checked(request)
    given = body.get("input")
    if given is None or given == "" or given == []:  # Ollama's way to load an embedding model
        load_s = await load(request, entry, SlotKind.EMBED, body)
        return json_reply({"model": body["model"], "embeddings": [], "load_duration": int(load_s * 1e9)})
    if not (isinstance(given, str) or (isinstance(given, list) and all(isinstance(v, str) for v in given))):
        # Ollama takes text only (no token arrays, unlike OpenAI's embeddings).
        raise ApiError(400, "input must be a string or an array of strings", param="input", code="invalid_request")
    inputs = embedding_inputs(given)
    if body.get("truncate") is False:
        log.info("ollama embed: truncate=false: inputs longer than the context are the engine's error")
    dimensions = body.get("dimensions")
    done = await embed_inputs(request, entry, inputs, keep_alive=body.get("keep_alive"), dimensions=dimensions)
    return json_reply({
        "model": body["model"], "embeddings": done.vectors, "total_duration": time.perf_counter_ns() - started,
        "load_duration": int(done.load_s * 1e9), "prompt_eval_count": done.prompt_tokens,
    })


async def embeddings(request: web.Request) -> web.Response:
    """The legacy form: one `prompt`, one `embedding`."""
    body, entry = await _checked(request)
    prompt = body.get("prompt")
    if not prompt:
        await load(request, entry, SlotKind.EMBED, body)
        return json_reply({"embedding": []})
    done = await embed_inputs(request, entry, [prompt], keep_alive=body.get("keep_alive"))
    return json_reply({"embedding": done.vectors[0]})


async def _checked(request: web.Request) -> tuple[dict[str, Any], ModelEntry]:
    body, entry = await codec.read_request(request)
    if body.get("options"):
        log.info("ollama embed: options %s ignored (an embedding engine takes none per request)",
                 ", ".join(sorted(body["options"])))
    require_kind(entry, SlotKind.EMBED)
    return body, entry
