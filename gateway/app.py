"""make_app(): the gateway's aiohttp application, its middlewares and its paired start/stop."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.api.anthropic.routes import setup_anthropic_routes
from gateway.api.native.routes import setup_native_routes
from gateway.api.ollama.routes import setup_ollama_routes
from gateway.api.openai.routes import setup_openai_routes
from gateway.ui.routes import setup_ui_routes
from catalog.store import ModelStore
from gateway.keys import LIVE, MANAGER, PATHS, SETTINGS, STORE, STREAMS, UPSTREAM
from gateway.live import LiveSettings, follow
from gateway.middleware.auth import setup_auth
from gateway.middleware.body_limit import setup_body_limit
from gateway.middleware.deadlines import setup_connection, setup_deadlines
from gateway.middleware.errors import setup_errors
from gateway.middleware.host import setup_host
from gateway.middleware.metrics import setup_metrics
from gateway.middleware.origin import setup_origin
from manager.client import ManagerClient
from manager.config import Paths, Settings
from manager.config_remote import remote_entries
from manager.protocol import PeerRole


def make_app(settings: Settings, paths: Paths) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_mb * 1024**2)
    app[SETTINGS] = settings
    app[LIVE] = LiveSettings(settings)  # what middlewares and handlers read: config.toml's live keys change it
    app[PATHS] = paths
    app[STREAMS] = set()
    app[STORE] = ModelStore(paths, remote_entries(settings.remote))  # [[remote]] models are listed too
    # Middlewares, outermost first (SPEC.md, "Gateway policy"):
    #   metrics: every request gets its id and record first, so that every refusal below is counted;
    setup_metrics(app)
    #   connection: the request's headers are in, so its connection's header deadline is over;
    setup_connection(app)
    #   errors: every failure, a refusal by the middlewares below included, leaves in the route's own format;
    setup_errors(app)
    #   origin: a browser page from a foreign origin is refused; CORS preflights only for allowed origins;
    setup_origin(app)
    #   host: a Host header that names someone else's domain (DNS rebinding) is refused;
    setup_host(app)
    #   deadlines: the body within body_timeout_s (headers and stalled readers: the connection's, deadlines.py);
    setup_deadlines(app)
    #   body limit: max_body_mb, declared or streamed; compressed bodies refused;
    setup_body_limit(app)
    #   auth: Bearer keys scoped inference or admin; trusted networks need no key for inference.
    setup_auth(app)
    # Concurrency is the manager's: a lease is the permit, queued per model (manager/queues.py).
    app.cleanup_ctx.append(_manager_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_live_config_ctx)
    setup_native_routes(app)
    setup_openai_routes(app)
    setup_anthropic_routes(app)
    setup_ollama_routes(app)
    setup_ui_routes(app)
    return app


async def _manager_ctx(app: web.Application) -> AsyncIterator[None]:
    client = ManagerClient(app[PATHS], PeerRole.GATEWAY)
    # Serve even before the manager is up: /health says 503 until it answers.
    await client.start(wait=5.0, required=False)
    app[MANAGER] = client
    yield
    await client.close()


async def _live_config_ctx(app: web.Application) -> AsyncIterator[None]:
    # config.toml edited by hand or by `lmforge config edit` applies here too, as PATCH /lf/config does.
    task = asyncio.create_task(follow(app[LIVE], app[PATHS]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
