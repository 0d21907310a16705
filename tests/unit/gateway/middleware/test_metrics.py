"""gateway/middleware/metrics.py: how a request's end is recorded, through a real aiohttp server."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp import test_utils

from gateway.keys import REQUEST_LOG, SETTINGS
from gateway.middleware.metrics import setup_metrics
from gateway.request_log import record_of
from manager.config import Settings


async def served(handler) -> test_utils.TestServer:  # type: ignore[no-untyped-def]
    app = web.Application()
    app[SETTINGS] = Settings()
    setup_metrics(app)
    app.router.add_post("/v1/chat/completions", handler)
    server = test_utils.TestServer(app)
    await server.start_server()
    return server


@pytest.mark.parametrize("last_frame_written, outcome, status", [(True, "ok", 200), (False, "client_gone", 499)])
async def test_a_client_that_hangs_up_after_the_last_frame_had_its_answer(
        last_frame_written: bool, outcome: str, status: int) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"data: [DONE]\n\n")
        if last_frame_written:
            record_of(request).sent(resp.status)
        raise ConnectionResetError  # what write_eof raises when the client has just hung up
    server = await served(stream)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(server.make_url("/v1/chat/completions"), json={}) as resp:
                await resp.content.readuntil(b"[DONE]")
        (record,) = server.app[REQUEST_LOG].recent(1)
        assert (record.outcome, record.status) == (outcome, status)
    finally:
        await server.close()
