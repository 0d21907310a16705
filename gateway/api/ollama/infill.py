"""Fill-in-the-middle for /api/generate's `suffix`, through llama-server's native /infill.

llama-server's /v1/completions accepts `suffix` but ignores it; /infill lays the
prompt and suffix out with the model's FIM tokens. It streams llama-server's
native chunks (`content`, `stop`, `stop_type`, `timings`), not OpenAI's, so they
are parsed into events here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp

from gateway.dataplane.engine import Engine, Events
from gateway.dataplane.model import Event, Finish, TextDelta, TextRequest, Usage, engine_body
from gateway.errors import ApiError


def infill_body(req: TextRequest) -> dict[str, Any]:
    """The completion body, with the prompt and suffix where /infill takes them."""
    body = engine_body(req)
    body.pop("stream_options", None)
    body.pop("suffix", None)
    body["input_prefix"], body["input_suffix"], body["prompt"] = body.pop("prompt"), req.suffix or "", ""
    return body


async def infill_events(engine: Engine, req: TextRequest) -> Events:
    """Open the streamed /infill call (errors before the stream raise here) and return its events."""
    try:
        up = await engine.opened("/infill", infill_body(req))
    except ApiError as err:
        if err.status == 501:  # the model has no FIM tokens after all
            raise ApiError(400, f"model {req.model!r} does not support insert (suffix): {err.message}",
                           param="suffix", code="model_not_supported") from None
        raise
    return _events(engine, up)


async def _events(engine: Engine, up: aiohttp.ClientResponse) -> Events:
    """Text as it comes, one list per read; Usage and one Finish from the chunk marked `stop` (llama-server's own format)."""
    finish: list[Event] = [Finish("stop")]
    chunks = engine.chunks(up)
    async with contextlib.aclosing(chunks):
        async for batch in chunks:
            out: list[Event] = []
            for chunk in batch:
                if chunk.get("content"):
                    out.append(TextDelta(chunk["content"]))
                if chunk.get("stop"):
                    timings = chunk.get("timings") or {}
                    finish = [Usage(prompt_tokens=chunk.get("tokens_evaluated", 0),
                                    completion_tokens=chunk.get("tokens_predicted", 0),
                                    prompt_ms=timings.get("prompt_ms", 0.0),
                                    predicted_ms=timings.get("predicted_ms", 0.0)),
                              Finish("length" if chunk.get("stop_type") == "limit" else "stop")]
            if out:
                yield out
            if len(finish) == 2:
                break
    yield finish
