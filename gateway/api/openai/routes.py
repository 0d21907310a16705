"""Routes of the OpenAI-compatible API."""

from __future__ import annotations

from aiohttp import web

from gateway.api.openai import handlers
from gateway.api.openai.rerank import rerank
from gateway.api.openai.responses import create_response


def setup_openai_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", handlers.list_models)
    # Ids hold "/" and ":"; any character matches, so that a bad one is refused by the naming rule (400).
    app.router.add_get(r"/v1/models/{id:[\s\S]+}", handlers.get_model)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/v1/embeddings", handlers.embeddings)
    app.router.add_post("/v1/responses", create_response)
    # Cohere/Jina-shaped rerank under the names clients use; /api/rerank answers in Ollama's error shape.
    for path in ("/v1/rerank", "/rerank", "/api/rerank"):
        app.router.add_post(path, rerank)
