"""Routes of the Anthropic Messages API."""

from __future__ import annotations

from aiohttp import web

from gateway.api.anthropic import handlers


def setup_anthropic_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", handlers.messages)
    app.router.add_post("/v1/messages/count_tokens", handlers.count_tokens)
