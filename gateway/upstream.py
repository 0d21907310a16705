"""The fast path: OpenAI chat and completions relayed byte for byte to a leased engine.

The request body goes to the engine as the client sent it (less LMForge-only
fields); the engine's bytes come back unchanged, with no parsing on the way.
Leasing, the retry after a gone engine and engine errors are the data plane's
(gateway/dataplane/engine.py); translated dialects use the same engine client.
A stream that started while its request was queued carries the engine's bytes
after the queue's comment lines, and a failure there as an error event.
"""

from __future__ import annotations

import collections
from typing import Any

import msgspec
from aiohttp import web

from gateway.dataplane import progress
from gateway.dataplane.engine import BROKEN, Engine, usage_of, with_engine
from gateway.dataplane.model import Usage
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

    notes = progress.sse_comment if progress.wanted(request) else None
    queued = QueuedStream(request, SSE_HEADERS, error_frame, progress=notes) if stream else None
    return await with_engine(request, send, model=model, kind=kind, keep_alive=keep_alive, queued=queued)


async def _whole(request: web.Request, engine: Engine, path: str, body: bytes) -> web.Response:
    content_type, data = await engine.read(path, body)
    if (usage := usage_in(data)) is not None:
        engine.record.usage(usage)
    return web.Response(body=data, content_type=content_type, headers={"X-Request-Id": engine.trace})


async def _stream(request: web.Request, engine: Engine, path: str, body: bytes) -> web.StreamResponse:
    up = await engine.opened(path, body)
    resp = engine.response or web.StreamResponse(headers={**SSE_HEADERS, "X-Request-Id": engine.trace})
    record, tail = engine.record, collections.deque(maxlen=TAIL_READS)
    record.stream = True
    async with up:
        try:
            if not resp.prepared:
                await resp.prepare(request)
            async for chunk in up.content.iter_any():
                if record.first_token_ms is None and b"data:" in chunk:
                    # The first event, not the first bytes: llama-server sends ":" keep-alive comments while it
                    # reads a long prompt. Its role-only delta comes with the first token.
                    record.first_token()
                tail.append(chunk)
                await resp.write(chunk)
        except ConnectionResetError:
            raise  # the client left (aiohttp's ClientConnectionResetError is one too)
        except BROKEN as exc:  # the engine died mid-stream: end with an error event the client can see
            broke = engine.broke(exc)
            record.broke(str(broke))
            await resp.write(error_frame(ApiError(502, str(broke), code="engine_failed")))
        finally:
            if not up.content.is_eof():
                up.close()  # closing the socket aborts the engine's generation
    if (usage := usage_in_stream(b"".join(tail))) is not None:
        record.usage(usage)
    record.sent(resp.status)
    await resp.write_eof()
    return resp


TAIL_READS = 4  # reads of a relayed stream kept: its last events carry the usage and the engine's timings


class _Counts(msgspec.Struct):
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None


_counts = msgspec.json.Decoder(_Counts)


def usage_in(data: bytes) -> Usage | None:
    """The usage and timings of a whole OpenAI answer, read without decoding the rest of it."""
    try:
        counts = _counts.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if counts.usage is None and counts.timings is None:
        return None
    return usage_of({"usage": counts.usage, "timings": counts.timings})


def usage_in_stream(tail: bytes) -> Usage | None:
    """The last event of a relayed stream that carries usage or timings (llama-server repeats its timings)."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data:") and (b'"usage"' in line or b'"timings"' in line):
            return usage_in(line[5:].strip())
    return None


def error_frame(err: ApiError) -> bytes:
    """An OpenAI stream's error event: the error object as a data line, which OpenAI's clients raise."""
    return frame(None, err.body())
