"""The deadline protocol and runner under a small in-process app: which connections are cut, when, and
that aiohttp's graceful shutdown still drains through a runner whose `server` is a factory."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway.keys import SETTINGS
from gateway.middleware.deadlines import DeadlineHandler, DeadlineRunner, setup_connection, setup_deadlines
from manager.config import Settings

HEADER_S, WRITE_S, IDLE_S = 0.3, 0.3, 1.5
ENTERED, RELEASE, CANCELLED = (web.AppKey(name, asyncio.Event) for name in ("entered", "release", "cancelled"))


async def protocol(request: web.Request) -> web.Response:
    return web.Response(text=type(request.protocol).__name__)


async def held(request: web.Request) -> web.Response:
    request.app[ENTERED].set()
    await request.app[RELEASE].wait()
    return web.Response(text="done")


async def flood(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    try:
        while True:
            await resp.write(b"x" * 65536)
    except asyncio.CancelledError:
        request.app[CANCELLED].set()
        raise


@pytest.fixture
async def served() -> AsyncIterator[tuple[web.Application, DeadlineRunner, int]]:
    app = web.Application()
    app[SETTINGS] = Settings(header_timeout_s=HEADER_S, body_timeout_s=HEADER_S, write_timeout_s=WRITE_S,
                             idle_timeout_s=IDLE_S)
    for key in (ENTERED, RELEASE, CANCELLED):
        app[key] = asyncio.Event()
    setup_connection(app)
    setup_deadlines(app)
    app.router.add_get("/protocol", protocol)
    app.router.add_get("/held", held)
    app.router.add_get("/flood", flood)
    runner = DeadlineRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield app, runner, site.port
    await runner.cleanup()


async def closed_after(reader: asyncio.StreamReader, timeout: float) -> float:
    """Seconds until the server closes the connection (what it sent before is skipped)."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while await reader.read(65536):
            pass
    return time.monotonic() - started


async def test_each_connection_is_a_deadline_handler_and_cleanup_drains_a_request_in_flight(served) -> None:
    app, runner, port = served
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/protocol") as resp:
            assert await resp.text() == DeadlineHandler.__name__
        answer = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/held"))
        await asyncio.wait_for(app[ENTERED].wait(), 5)
        # aiohttp's cleanup must act on the app's web.Server (pre_shutdown, shutdown), not on the runner's
        # `server` property, which this runner turns into a factory: it would fail here otherwise.
        cleanup = asyncio.create_task(runner.cleanup())
        app[RELEASE].set()
        resp = await asyncio.wait_for(answer, 5)
        assert resp.status == 200 and await resp.text() == "done"
        await asyncio.wait_for(cleanup, 5)


async def test_a_silent_connection_is_closed_at_the_header_deadline(served) -> None:
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert HEADER_S <= await closed_after(reader, 5) < HEADER_S + 2
    writer.close()


async def test_a_kept_alive_connection_waits_for_the_idle_timeout_not_the_header_deadline(served) -> None:
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /protocol HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert IDLE_S - 0.1 <= await closed_after(reader, 10) < IDLE_S + 2  # the answer's body, then the close
    writer.close()


async def test_a_client_that_stops_reading_is_cut_off_and_its_handler_cancelled(served) -> None:
    app, _, port = served
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /flood HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    started = time.monotonic()
    await asyncio.wait_for(app[CANCELLED].wait(), 10)  # and it never reads
    assert WRITE_S <= time.monotonic() - started < WRITE_S + 3
    sock.close()
