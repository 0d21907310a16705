"""Routes of the Ollama-compatible /api: inference, listings, the model index (blobs, create, copy, delete), pull."""

from __future__ import annotations

from aiohttp import web

from gateway.api.ollama import chat_handlers, embed_handlers, index_handlers, listing_handlers, pull_handlers


def setup_ollama_routes(app: web.Application) -> None:
    app.router.add_get("/", listing_handlers.root)  # HEAD / too: Ollama's liveness check
    app.router.add_get("/api/version", listing_handlers.version)
    app.router.add_get("/api/tags", listing_handlers.tags)
    app.router.add_post("/api/show", listing_handlers.show)
    app.router.add_get("/api/ps", listing_handlers.ps)
    app.router.add_post("/api/chat", chat_handlers.chat)
    app.router.add_post("/api/generate", chat_handlers.generate)
    app.router.add_post("/api/embed", embed_handlers.embed)
    app.router.add_post("/api/embeddings", embed_handlers.embeddings)
    app.router.add_route("HEAD", "/api/blobs/{digest}", index_handlers.head_blob)
    app.router.add_post("/api/blobs/{digest}", index_handlers.create_blob)
    app.router.add_post("/api/create", index_handlers.create)
    app.router.add_post("/api/copy", index_handlers.copy)
    app.router.add_delete("/api/delete", index_handlers.delete)
    app.router.add_post("/api/pull", pull_handlers.pull)
