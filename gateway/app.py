"""make_app(): the gateway's aiohttp application, its middlewares and its paired start/stop."""

from __future__ import annotations

from typing import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.api.anthropic.routes import setup_anthropic_routes
from gateway.api.native.routes import setup_native_routes
from gateway.api.ollama.index_handlers import setup_index_routes
from gateway.api.ollama.routes import setup_ollama_routes
from gateway.api.openai.routes import setup_openai_routes
from catalog.store import ModelStore
from gateway.keys import MANAGER, PATHS, SETTINGS, STORE, STREAMS, UPSTREAM
from gateway.middleware.errors import setup_errors
from manager.client import ManagerClient
from manager.config import Paths, Settings
from manager.protocol import PeerRole

MAX_BODY = 32 * 1024**2


def make_app(settings: Settings, paths: Paths) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[PATHS] = paths
    app[STREAMS] = set()
    app[STORE] = ModelStore(paths)
    # Middlewares, outermost first:
    #   errors: every failure leaves in the calling API's own error format.
    setup_errors(app)
    app.cleanup_ctx.append(_manager_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    setup_native_routes(app)
    setup_openai_routes(app)
    setup_anthropic_routes(app)
    setup_index_routes(app)
    setup_ollama_routes(app)
    return app


async def _manager_ctx(app: web.Application) -> AsyncIterator[None]:
    client = ManagerClient(app[PATHS], PeerRole.GATEWAY)
    # Serve even before the manager is up: /health says 503 until it answers.
    await client.start(wait=5.0, required=False)
    app[MANAGER] = client
    yield
    await client.close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    # No pool limit: the manager's leases, not the connector, bound engine load.
    # No keep-alive: llama-server closes a connection after each streamed response
    # although it advertises keep-alive (a reused one fails), and an open idle
    # connection would hold up its exit on SIGTERM. A loopback connect is ~0.1 ms.
    connector = aiohttp.TCPConnector(limit=0, use_dns_cache=False, force_close=True)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    app[UPSTREAM] = session
    yield
    await session.close()
