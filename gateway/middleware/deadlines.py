"""Deadlines on every connection, against slowloris and stalled readers: headers, body, writes, idleness.

aiohttp bounds none of these by itself (its keep-alive timer closes only a
connection waiting between requests). `DeadlineHandler` is aiohttp's
per-connection protocol with a header and a write deadline; it overrides
asyncio protocol methods only. The middleware tells it when a request's
handler runs and gives the body its own deadline. `DeadlineRunner` makes
aiohttp build a DeadlineHandler for each connection (gateway/__main__.py
serves through it); idle kept-alive connections close after idle_timeout_s.
The timeouts change live (gateway/live.py): a connection keeps those in force
when it opened, a body gets those in force when its request arrives.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from aiohttp import web

from gateway.keys import LIVE, live_settings
from gateway.middleware.body_limit import streams_to_disk

log = logging.getLogger("lmforge.gateway")


class DeadlineHandler(web.RequestHandler):
    """One connection. Headers must arrive within header_timeout_s of the connection opening or of the
    first byte of the next kept-alive request; a client that reads nothing of its answer for
    write_timeout_s is cut off, which cancels its handler (handler_cancellation) and so returns its lease."""

    __slots__ = ("_header_timeout_s", "_write_timeout_s", "_header_deadline", "_write_deadline", "_in_request")

    def __init__(self, server: web.Server, *, header_timeout_s: float, write_timeout_s: float,
                 **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._write_timeout_s = write_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._in_request = False  # set by the middleware while a handler runs

    # --- asyncio protocol methods ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if data and not self._in_request:  # aiohttp itself passes b"" when it resumes reading
            self._arm_header_deadline()
        super().data_received(data)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_deadline = asyncio.get_running_loop().call_later(self._write_timeout_s, self._reader_stalled)

    def resume_writing(self) -> None:
        self._cancel_write_deadline()
        super().resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_deadline()
        self._cancel_write_deadline()
        super().connection_lost(exc)

    # --- told by the middleware ---

    def request_started(self) -> None:
        """The request's headers are in and its handler runs."""
        self._in_request = True
        self._cancel_header_deadline()

    def request_ended(self) -> None:
        self._in_request = False

    # --- deadlines ---

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = asyncio.get_running_loop().call_later(self._header_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        # Armed while no request ran and cancelled when one starts: none has started since.
        self._header_deadline = None
        log.debug("closed the connection from %s: no request headers within %gs", self._peer(),
                  self._header_timeout_s)
        self.force_close()

    def _reader_stalled(self) -> None:
        self._write_deadline = None
        log.info("dropped the client at %s: it read nothing of its answer for %gs", self._peer(),
                 self._write_timeout_s)
        if self.transport is not None:
            self.transport.abort()  # close() would wait to flush what the client will never read

    def _peer(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _cancel_write_deadline(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None


class DeadlineRunner(web.AppRunner):
    """An AppRunner whose connections are DeadlineHandlers.

    TCPSite takes the runner's public `server` as its protocol factory; this one
    returns a factory that builds a DeadlineHandler for the app's web.Server.
    aiohttp's own cleanup (pre_shutdown, shutdown) acts on that Server, which
    tracks every connection, not on this property, so graceful shutdown is
    unchanged; tests/unit/gateway/middleware/test_deadlines.py fails if it ever does.
    """

    def __init__(self, app: web.Application, *, shutdown_timeout: float) -> None:
        # handler_cancellation: a client that goes away (or is cut off) cancels its handler and its engine request.
        super().__init__(app, handler_cancellation=True, shutdown_timeout=shutdown_timeout)
        self._live = live_settings(app)

    @property
    def server(self) -> Callable[[], DeadlineHandler] | None:  # type: ignore[override]
        server = super().server
        if server is None:
            return None
        live = self._live

        def connection() -> DeadlineHandler:
            s = live.current  # the timeouts in force as the connection opens
            return DeadlineHandler(
                server, loop=asyncio.get_running_loop(), header_timeout_s=s.header_timeout_s,
                write_timeout_s=s.write_timeout_s, keepalive_timeout=s.idle_timeout_s, access_log=None,
                auto_decompress=False,  # compressed bodies are refused (body_limit.py), never inflated
            )
        return connection


class BodyDeadline:
    """A request's body must be in within body_timeout_s of its headers; an upload streamed to disk
    (a model's GGUF, many GB) must only keep moving: no bytes for body_timeout_s."""

    def __init__(self, request: web.Request, timeout_s: float) -> None:
        self.request = request
        self.timeout_s = timeout_s
        self.moving = streams_to_disk(request)
        self.seen = request.content.total_bytes
        self.timer = asyncio.get_running_loop().call_later(timeout_s, self._check)

    def cancel(self) -> None:
        self.timer.cancel()

    def _check(self) -> None:
        content = self.request.content
        if content.is_eof():
            return
        if self.moving and content.total_bytes != self.seen:
            self.seen = content.total_bytes
            self.timer = asyncio.get_running_loop().call_later(self.timeout_s, self._check)
            return
        log.info("dropped the client at %s: its %s %s body did not arrive within %gs", self.request.remote,
                 self.request.method, self.request.path, self.timeout_s)
        if self.request.transport is not None:
            self.request.transport.abort()  # the handler is cancelled with the connection


@web.middleware
async def connection_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Outermost: this request's headers are in, so its connection's header deadline is over, whoever answers
    it (a request the origin or host check refuses too; else its kept-alive connection would be cut later)."""
    protocol: DeadlineHandler = request.protocol  # type: ignore[assignment]  # DeadlineRunner serves the app
    protocol.request_started()
    try:
        return await handler(request)
    finally:
        protocol.request_ended()


@web.middleware
async def deadlines_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    body = None
    if request.body_exists and not request.content.is_eof():
        body = BodyDeadline(request, request.app[LIVE].current.body_timeout_s)
    try:
        return await handler(request)
    finally:
        if body is not None:
            body.cancel()


def setup_connection(app: web.Application) -> None:
    app.middlewares.append(connection_middleware)


def setup_deadlines(app: web.Application) -> None:
    live_settings(app)  # the middleware reads body_timeout_s from it
    app.middlewares.append(deadlines_middleware)
