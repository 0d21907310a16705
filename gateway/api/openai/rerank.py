"""Rerank in the Cohere/Jina shape, on /v1/rerank, /rerank and /api/rerank.

`documents` are strings or objects with a `text` field; results come back
sorted by `relevance_score` (the engine's score, unchanged), cut to `top_n`,
with the document when `return_documents` is true. Errors follow the path's
dialect like every other route.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.dataplane.engine import Engine, with_engine
from gateway.dataplane.gates import find_model, require_kind
from gateway.dataplane.validate import Rule, check, read_json, require
from gateway.errors import ApiError
from manager.protocol import SlotKind

RULES = {"model": Rule("str"), "query": Rule("str"), "documents": Rule("list"), "top_n": Rule("int", 1, 2**31),
         "return_documents": Rule("bool"), "keep_alive": Rule("duration")}


async def rerank(request: web.Request) -> web.Response:
    body = await read_json(request)
    check(body, RULES)
    require(body, "model", "query", "documents")
    texts = [_text(doc, i) for i, doc in enumerate(body["documents"])]
    if not texts:
        raise ApiError(400, "documents must not be empty", param="documents", code="invalid_request")
    entry = find_model(request, body["model"])
    require_kind(entry, SlotKind.RERANK)

    async def work(engine: Engine) -> dict[str, Any]:
        return await engine.json("/v1/rerank", {"model": entry.name, "query": body["query"], "documents": texts})

    reply = await with_engine(request, work, model=entry.name, kind=SlotKind.RERANK,
                              keep_alive=body.get("keep_alive"))
    ranked = sorted(reply.get("results") or (), key=lambda r: r["relevance_score"], reverse=True)
    results = []
    for item in ranked[:body.get("top_n") or len(ranked)]:
        result: dict[str, Any] = {"index": item["index"], "relevance_score": item["relevance_score"]}
        if body.get("return_documents"):
            result["document"] = {"text": texts[item["index"]]}
        results.append(result)
    usage = reply.get("usage") or {}
    tokens = int(usage.get("total_tokens") or usage.get("prompt_tokens") or 0)
    return web.json_response({"object": "list", "model": body["model"], "results": results,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _text(doc: Any, i: int) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        return doc["text"]
    raise ApiError(400, f"documents[{i}] must be a string or an object with a text field",
                   param=f"documents[{i}]", code="invalid_request")
