"""Embeddings for any dialect: inputs checked, split into `embed_batch_size` chunks, sent concurrently.

All chunks go to one leased engine, at most the engine's parallel slots at a
time; vectors come back in input order and the usage is summed. `dimensions`
shortens each vector and normalises it again (Matryoshka-style), never
lengthens it.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import msgspec
from aiohttp import web

from gateway.dataplane.engine import Engine, with_engine
from gateway.errors import ApiError
from gateway.keys import LIVE
from manager.protocol import ModelEntry, SlotKind

Inputs = list[str] | list[list[int]]


class Embedded(msgspec.Struct, kw_only=True):
    vectors: list[list[float]]
    prompt_tokens: int
    load_s: float


def embedding_inputs(value: Any, field: str = "input") -> Inputs:
    """A string, a list of strings, one token array, or a list of token arrays, as a list of inputs."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(_is_token(v) for v in value):
            return [value]  # one token array is one input
        if all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
            return value
    raise ApiError(400, f"{field} must be a string, a non-empty array of strings, an array of token ids, "
                   "or an array of token-id arrays", param=field, code="invalid_request")


def _is_token(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


async def embed_inputs(
    request: web.Request, entry: ModelEntry, inputs: Inputs, *, keep_alive: str | float | None = None,
    dimensions: int | None = None,
) -> Embedded:
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)
                                   or dimensions < 1):
        raise ApiError(400, "dimensions must be a positive integer", param="dimensions", code="invalid_request")
    settings = request.app[LIVE].current  # embed_batch_size changes live
    size = settings.embed_batch_size
    chunks = [inputs[i:i + size] for i in range(0, len(inputs), size)]
    room = asyncio.Semaphore(settings.llama_cpp.parallel)

    async def one(engine: Engine, chunk: Inputs) -> tuple[list[list[float]], int]:
        async with room:
            reply = await engine.json("/v1/embeddings", {"model": entry.name, "input": chunk,
                                                         "encoding_format": "float"})
        data = sorted(reply.get("data") or (), key=lambda d: d.get("index", 0))
        if len(data) != len(chunk):
            raise ApiError(502, f"the engine returned {len(data)} embeddings for {len(chunk)} inputs",
                           code="engine_error")
        return [d["embedding"] for d in data], int((reply.get("usage") or {}).get("prompt_tokens", 0))

    async def work(engine: Engine) -> Embedded:
        try:
            async with asyncio.TaskGroup() as group:  # one chunk failing cancels the rest
                tasks = [group.create_task(one(engine, chunk)) for chunk in chunks]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        parts = [task.result() for task in tasks]
        vectors = [v for part, _ in parts for v in part]
        return Embedded(vectors=vectors, prompt_tokens=sum(n for _, n in parts), load_s=engine.lease.load_s)

    done = await with_engine(request, work, model=entry.name, kind=SlotKind.EMBED, keep_alive=keep_alive)
    if dimensions is not None:
        done.vectors = [shorten(v, dimensions, entry.name) for v in done.vectors]
    return done


def shorten(vector: list[float], dimensions: int, model: str) -> list[float]:
    if dimensions > len(vector):
        raise ApiError(400, f"dimensions {dimensions} is more than model {model!r} gives ({len(vector)})",
                       param="dimensions", code="invalid_request")
    cut = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in cut)) or 1.0
    return [x / norm for x in cut]
