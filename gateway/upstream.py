"""The data plane: lease an engine from the manager, then stream bytes straight to and from it.

The request body goes to the engine as the client sent it (less LMForge-only
fields); the engine's bytes come back unchanged. The lease is returned when the
response ends, the client goes away, or the engine fails. An engine that refuses
or resets the connection before any response byte is gone: the manager hears so
with the lease, and the request is tried once more on a fresh lease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import aiohttp
from aiohttp import web

from gateway.errors import OpenAIError
from gateway.keys import MANAGER, SETTINGS, UPSTREAM
from manager.protocol import AcquireReply, LeaseOutcome, SlotKind

log = logging.getLogger("lmforge.gateway")

TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=600)


class EngineGone(Exception):
    """The engine refused or reset the connection before answering: it is not there any more."""


class EngineBroke(Exception):
    """The engine failed after the response had started; `response` is already finished."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("engine failed mid-response")
        self.response = response


async def proxy(
    request: web.Request, *, model: str, kind: SlotKind, keep_alive: str | float | None,
    path: str, body: bytes, stream: bool,
) -> web.StreamResponse:
    trace = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    try:
        return await _leased(request, model, kind, keep_alive, path, body, stream, trace)
    except EngineGone as gone:
        log.warning("engine for %s was gone (%s); retrying on a fresh lease", model, gone.__cause__)
        try:
            return await _leased(request, model, kind, keep_alive, path, body, stream, trace)
        except EngineGone as again:
            raise _unreachable(model, again.__cause__ or again) from None


async def _leased(request: web.Request, model: str, kind: SlotKind, keep_alive: str | float | None,
                  path: str, body: bytes, stream: bool, trace: str) -> web.StreamResponse:
    """One attempt: lease the engine, send, and return the lease with how it went."""
    settings = request.app[SETTINGS]
    # A cold model may need its drain wait and a full load before it answers.
    wait = settings.load_timeout_s + settings.drain_timeout_s + 30
    send = _stream if stream else _whole
    async with request.app[MANAGER].lease(model=model, kind=kind, keep_alive=keep_alive, trace_id=trace,
                                          timeout=wait) as held:
        try:
            return await send(request, held.reply, path, body, trace)
        except EngineGone:
            held.outcome = LeaseOutcome.ENGINE_GONE  # the manager fails the slot before our next acquire
            raise
        except EngineBroke as broke:
            held.outcome = LeaseOutcome.UPSTREAM_ERROR
            return broke.response
        except (asyncio.CancelledError, ConnectionResetError):
            held.outcome = LeaseOutcome.CLIENT_GONE
            raise
        except OpenAIError:
            held.outcome = LeaseOutcome.UPSTREAM_ERROR
            raise


async def _post(request: web.Request, lease: AcquireReply, path: str, body: bytes,
                trace: str) -> aiohttp.ClientResponse:
    """Send the request to the engine; returns once its response headers are in."""
    session = request.app[UPSTREAM]
    try:
        return await session.post(lease.base_url + path, data=body, headers=_headers(trace), timeout=TIMEOUT)
    except asyncio.TimeoutError as exc:  # slow is not gone (aiohttp's timeouts are connection errors too)
        raise _unreachable(lease.model, exc) from None
    except aiohttp.ClientConnectionError as exc:
        # Refused, reset, or closed before a byte of answer (a dying engine's
        # socket may still accept, then drop what we write): it is gone.
        raise EngineGone() from exc
    except aiohttp.ClientError as exc:
        raise _unreachable(lease.model, exc) from None


def _headers(trace: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Request-Id": trace}


async def _whole(request: web.Request, lease: AcquireReply, path: str, body: bytes, trace: str) -> web.Response:
    up = await _post(request, lease, path, body, trace)
    try:
        async with up:
            data = await up.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise _unreachable(lease.model, exc) from None
    if up.status >= 400:
        return _engine_error(up.status, data, trace)
    return web.Response(body=data, status=up.status, content_type=up.content_type, headers={"X-Request-Id": trace})


async def _stream(
    request: web.Request, lease: AcquireReply, path: str, body: bytes, trace: str
) -> web.StreamResponse:
    up = await _post(request, lease, path, body, trace)
    try:
        async with up:
            try:
                return await _relay(request, up, lease, trace)
            finally:
                if not up.content.is_eof():
                    up.close()  # closing the socket aborts the engine's generation
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise _unreachable(lease.model, exc) from None


async def _relay(
    request: web.Request, up: aiohttp.ClientResponse, lease: AcquireReply, trace: str
) -> web.StreamResponse:
    if up.status >= 400:
        return _engine_error(up.status, await up.read(), trace)
    resp = web.StreamResponse(headers={
        "Content-Type": up.headers.get("Content-Type", "text/event-stream"),
        "Cache-Control": "no-cache",
        "X-Request-Id": trace,
    })
    await resp.prepare(request)
    try:
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
    except ConnectionResetError:
        raise  # the client left (aiohttp's ClientConnectionResetError is one too)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        # The engine died mid-stream: end with an error event the client can see.
        log.warning("engine for %s broke mid-stream: %s", lease.model, exc)
        await resp.write(sse_error(f"the engine serving {lease.model} failed mid-stream: {exc}"))
        await resp.write_eof()
        raise EngineBroke(resp) from None
    await resp.write_eof()
    return resp


def sse_error(message: str, code: str = "engine_failed") -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()


def _unreachable(model: str, exc: BaseException) -> OpenAIError:
    return OpenAIError(502, f"the engine serving {model} failed: {exc or type(exc).__name__}",
                       code="engine_unreachable")


def _engine_error(status: int, data: bytes, trace: str) -> web.Response:
    """The engine's own error, reshaped into an OpenAI error object when it is not one."""
    try:
        err = json.loads(data).get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        message = str(err.get("message", "engine error"))
        code = err.get("code")
        body = {"error": {"message": message, "type": err.get("type") or "server_error",
                          "param": err.get("param"), "code": None if code is None else str(code)}}
    else:
        text = data.decode(errors="replace").strip()[:500] or "engine error"
        body = OpenAIError(status, text, code="engine_error").body()
    return web.json_response(body, status=status, headers={"X-Request-Id": trace})
