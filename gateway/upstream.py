"""The fast path: OpenAI chat and completions relayed byte for byte to a leased engine.

The request body goes to the engine as the client sent it (less LMForge-only
fields); the engine's bytes come back unchanged, with no parsing on the way.
Leasing, the retry after a gone engine and engine errors are the data plane's
(gateway/dataplane/engine.py); translated dialects use the same engine client.
A stream that started while its request was queued carries the engine's bytes
after the queue's comment lines, and a failure there as an error event.
"""

from __future__ import annotations

from aiohttp import web

from gateway.dataplane.engine import BROKEN, Engine, with_engine
from gateway.dataplane.queued import QueuedStream
from gateway.errors import ApiError
from gateway.sse import SSE_HEADERS, frame
from manager.protocol import SlotKind


async def proxy(
    request: web.Request, *, model: str, kind: SlotKind, keep_alive: str | float | None,
    path: str, body: bytes, stream: bool,
) -> web.StreamResponse:
    async def send(engine: Engine) -> web.StreamResponse:
        return await (_stream if stream else _whole)(request, engine, path, body)

    queued = QueuedStream(request, SSE_HEADERS, error_frame) if stream else None
    return await with_engine(request, send, model=model, kind=kind, keep_alive=keep_alive, queued=queued)


async def _whole(request: web.Request, engine: Engine, path: str, body: bytes) -> web.Response:
    content_type, data = await engine.read(path, body)
    return web.Response(body=data, content_type=content_type, headers={"X-Request-Id": engine.trace})


async def _stream(request: web.Request, engine: Engine, path: str, body: bytes) -> web.StreamResponse:
    up = await engine.opened(path, body)
    resp = engine.response or web.StreamResponse(headers={**SSE_HEADERS, "X-Request-Id": engine.trace})
    async with up:
        try:
            if not resp.prepared:
                await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
        except ConnectionResetError:
            raise  # the client left (aiohttp's ClientConnectionResetError is one too)
        except BROKEN as exc:  # the engine died mid-stream: end with an error event the client can see
            await resp.write(error_frame(ApiError(502, str(engine.broke(exc)), code="engine_failed")))
        finally:
            if not up.content.is_eof():
                up.close()  # closing the socket aborts the engine's generation
    await resp.write_eof()
    return resp


def error_frame(err: ApiError) -> bytes:
    """An OpenAI stream's error event: the error object as a data line, which OpenAI's clients raise."""
    return frame(None, err.body())
