"""Routes of the OpenAI-compatible API."""

from __future__ import annotations

from aiohttp import web

from gateway.api.openai import handlers


def setup_openai_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/models/{id:.+}", handlers.get_model)  # ids hold "/" and ":"
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/v1/embeddings", handlers.embeddings)
