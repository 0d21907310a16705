"""The engine client: engine calls made over one lease, and the engine's SSE parsed into events.

`with_engine` leases a model from the manager and runs `work(engine)`; the work
may make several engine calls on that one lease (embedding chunks, the
thinking workflow's two calls). An engine that refuses or resets the
connection before answering is gone: the lease goes back as `engine_gone` (the
manager fails that slot at once) and the work runs once more on a fresh lease.
That is safe because no byte of the answer has reached the client before an
engine answers (a stream started while queued has sent comments only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import aiohttp
import msgspec
from aiohttp import web

from gateway.dataplane.model import Event, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from gateway.dataplane.queued import QueuedStream
from gateway.errors import ApiError, from_manager
from gateway.keys import LIVE, MANAGER, SETTINGS, UPSTREAM
from gateway.request_log import record_of, request_id
from manager.client import Holding, ManagerError, ManagerTimeout, ManagerUnavailable
from manager.engines.remote import REMOTE
from manager.protocol import AcquireReply, LeaseOutcome, SlotKind

log = logging.getLogger("lmforge.gateway")

TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=600)
T = TypeVar("T")
# An engine stream's events, one list per network read (see Engine.chunks).
Events = AsyncIterator[list[Event]]
_decode = msgspec.json.Decoder().decode


# How an engine's stream fails once it has started. A relay writing to its client catches the client
# leaving (ConnectionResetError, which aiohttp's write error also is) before these.
BROKEN = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError)


class EngineGone(Exception):
    """The engine refused or reset the connection before answering: it is not there any more."""


class EngineBroke(Exception):
    """The engine stream failed after it started; the client's response must end with this message."""


class Engine:
    """Calls to one leased engine. `failed` is set when a call broke, so the lease says so."""

    def __init__(self, request: web.Request, lease: AcquireReply, trace: str) -> None:
        self.session: aiohttp.ClientSession = request.app[UPSTREAM]
        self.lease = lease
        self.trace = trace
        self.failed = False
        self.gone = False  # the engine went away after the answer had started (a second call found it gone)
        self.response: web.StreamResponse | None = None  # the client's, when it started while the request was queued
        self.record = record_of(request)  # the request log's: first token and usage are noted on it
        # A [[remote]] model's engine runs elsewhere: it gets its key, and the name it serves the model as.
        self.remote = next((r for r in request.app[SETTINGS].remote if r.name == lease.model), None) \
            if lease.engine == REMOTE else None

    @property
    def model(self) -> str:
        return self.lease.model

    async def post(self, path: str, body: dict[str, Any] | bytes) -> aiohttp.ClientResponse:
        """Send a request; returns once the engine's response headers are in."""
        headers = {"Content-Type": "application/json", "X-Request-Id": self.trace}
        if self.remote is not None:
            body = _decode(body) if isinstance(body, bytes) else body
            body = {**body, "model": self.remote.served_as}
            if self.remote.api_key:
                headers["Authorization"] = f"Bearer {self.remote.api_key}"
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        try:
            return await self.session.post(self.lease.base_url + path, data=data, timeout=TIMEOUT, headers=headers)
        except asyncio.TimeoutError as exc:  # slow is not gone (aiohttp's timeouts are connection errors too)
            raise unreachable(self.model, exc) from None
        except aiohttp.ClientConnectionError as exc:
            # Refused, reset, or closed before a byte of answer (a dying engine's
            # socket may still accept, then drop what we write): it is gone.
            raise EngineGone() from exc
        except aiohttp.ClientError as exc:
            raise unreachable(self.model, exc) from None

    async def read(self, path: str, body: dict[str, Any] | bytes) -> tuple[str, bytes]:
        """A whole (non-streamed) engine call: (content type, body); an engine error is an ApiError with its status."""
        up = await self.post(path, body)
        try:
            async with up:
                data = await up.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.failed = True
            raise unreachable(self.model, exc) from None
        if up.status >= 400:
            raise self._error(up.status, data)
        return up.content_type, data

    def _error(self, status: int, data: bytes) -> ApiError:
        """The engine's error as the client's; a remote engine refusing LMForge's own key is LMForge's fault (502),
        never the client's 401."""
        if self.remote is not None and status in (401, 403):
            return ApiError(502, f"the remote engine of {self.model} refused LMForge's key ({status}): check api_key in "
                            "its [[remote]] entry", code="remote_refused")
        return engine_error(status, data)

    async def json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _decode((await self.read(path, body))[1])

    async def opened(self, path: str, body: dict[str, Any] | bytes) -> aiohttp.ClientResponse:
        """Open a streamed call; an engine error before the stream raises here, as an ApiError."""
        up = await self.post(path, body)
        if up.status >= 400:
            async with up:
                raise self._error(up.status, await up.read())
        return up

    async def chunks(self, up: aiohttp.ClientResponse) -> AsyncIterator[list[dict[str, Any]]]:
        """The SSE `data:` objects of an opened stream, one list per network read, until `[DONE]`.

        One list per read is what lets a dialect answer with one write per read: under
        load many tokens arrive together and leave together. The bytes are split on
        newlines here (aiohttp's line reader cost twice the rest of a translated token).
        An error object from the engine, a dropped connection or an unreadable event
        raises EngineBroke, after the objects before it; the caller ends its client's stream.
        """
        try:
            async with up:
                rest = b""  # a line still waiting for its end
                async for data in up.content.iter_any():
                    lines = (rest + data).split(b"\n")
                    rest = lines.pop()
                    batch, end = _data_objects(lines)
                    if batch:
                        yield batch
                    if isinstance(end, EngineBroke):
                        raise end
                    if end:
                        return
                if rest.startswith(b"data:") and rest[5:].strip() not in (b"", b"[DONE]"):
                    raise EngineBroke(f"the engine serving {self.model} ended its stream mid-event")
        except BROKEN as exc:
            raise self.broke(exc) from None
        except msgspec.DecodeError as exc:
            self.failed = True
            raise EngineBroke(f"the engine serving {self.model} sent an unreadable event: {exc}") from None

    async def events(self, path: str, body: dict[str, Any]) -> Events:
        """Open a streamed OpenAI call (errors before the stream raise here) and return its events."""
        return self._events(await self.opened(path, body))

    async def _events(self, up: aiohttp.ClientResponse) -> Events:
        """Deltas as they come, one list per read; the last list ends with one Usage and exactly one Finish.

        llama-server repeats its timings in every chunk and sends usage after the
        finish reason, so both are held back and read once, from the last chunk that had them.
        """
        finish, last = Finish("stop"), None
        chunks = self.chunks(up)
        async with contextlib.aclosing(chunks):
            async for batch in chunks:
                out: list[Event] = []
                for chunk in batch:
                    if "usage" in chunk or "timings" in chunk:
                        last = chunk
                    for event in events_of(chunk):
                        if isinstance(event, Finish):
                            finish = event
                        else:
                            out.append(event)
                if out:
                    self.record.first_token()
                    yield out
        usage = usage_of(last) if last is not None else None
        if usage is not None:
            self.record.usage(usage)
        yield ([usage] if usage is not None else []) + [finish]

    def broke(self, exc: BaseException) -> EngineBroke:
        """The engine's connection failed mid-stream: the lease is marked failed, and the client's stream
        ends with this."""
        self.failed = True
        log.warning("engine for %s broke mid-stream: %s", self.model, exc)
        return EngineBroke(f"the engine serving {self.model} failed mid-stream: {exc}")


def unreachable(model: str, exc: object) -> ApiError:
    return ApiError(502, f"the engine serving {model} failed: {exc or type(exc).__name__}",
                    code="engine_unreachable")


def _data_objects(lines: list[bytes]) -> tuple[list[dict[str, Any]], bool | EngineBroke]:
    """The `data:` objects in whole SSE lines, and whether the stream ended there ([DONE] or an engine error)."""
    out = []
    for line in lines:
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return out, True
        chunk = _decode(payload)
        if "error" in chunk:
            return out, EngineBroke(_message_of(chunk["error"]))
        out.append(chunk)
    return out, False


def events_of(chunk: dict[str, Any]) -> list[Event]:
    """The delta and finish events in one OpenAI stream chunk (chat or text completion), choice 0 only."""
    out: list[Event] = []
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        if delta is None:  # a text completion chunk
            if choice.get("text"):
                out.append(TextDelta(choice["text"]))
        else:
            # llama-server, SGLang and vLLM name it reasoning_content; mlx_lm.server names it reasoning.
            if reasoning := delta.get("reasoning_content") or delta.get("reasoning"):
                out.append(ReasoningDelta(reasoning))
            if delta.get("content"):
                out.append(TextDelta(delta["content"]))
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                out.append(ToolCallDelta(index=call.get("index", 0), id=call.get("id"),
                                         name=function.get("name"), arguments=function.get("arguments") or ""))
        if choice.get("finish_reason"):
            # llama-server names the stop string only in the final chunk of a `verbose` request.
            verbose = chunk.get("__verbose") or {}
            out.append(Finish(choice["finish_reason"], verbose.get("stopping_word") or None))
    return out


def usage_of(chunk: dict[str, Any]) -> Usage:
    """Token counts from OpenAI's usage, times from llama-server's timings (prompt_n counts only uncached tokens)."""
    usage, timings = chunk.get("usage") or {}, chunk.get("timings") or {}
    return Usage(prompt_tokens=usage.get("prompt_tokens", timings.get("prompt_n", 0)),
                 completion_tokens=usage.get("completion_tokens", timings.get("predicted_n", 0)),
                 prompt_ms=timings.get("prompt_ms", 0.0), predicted_ms=timings.get("predicted_ms", 0.0))


async def with_engine(
    request: web.Request, work: Callable[[Engine], Awaitable[T]], *, model: str, kind: SlotKind,
    keep_alive: str | float | None = None, num_ctx: int = 0, queued: QueuedStream | None = None,
) -> T:
    """Run `work` on a leased engine for `model`; once more on a fresh lease if the engine was gone.

    A streamed request passes `queued`: if it waits in the model's queue its stream starts
    then (work finds it on `engine.response`), and a failure after that ends the stream.
    """
    trace = request_id(request)
    if queued is not None:
        queued.headers["X-Request-Id"] = trace
        queued.follow(model, kind)
    try:
        for attempt in (1, 2):
            try:
                return await _leased(request, work, trace, model=model, kind=kind, keep_alive=keep_alive,
                                     num_ctx=num_ctx, queued=queued)
            except EngineGone as gone:
                if attempt == 2:
                    raise unreachable(model, gone.__cause__ or "connection lost") from None
                log.warning("engine for %s was gone (%s); retrying on a fresh lease", model, gone.__cause__)
        raise AssertionError("unreachable")
    except (ApiError, ManagerError, ManagerUnavailable) as exc:
        if queued is None or await queued.settled() is None:
            raise  # nothing sent yet: the error middleware answers with the status
        return await queued.fail(exc if isinstance(exc, ApiError) else from_manager(exc))  # type: ignore[return-value]
    finally:
        if queued is not None:
            queued.close()


async def _leased(request: web.Request, work: Callable[[Engine], Awaitable[T]], trace: str, *, model: str,
                  kind: SlotKind, keep_alive: str | float | None, num_ctx: int, queued: QueuedStream | None) -> T:
    wait = request.app[LIVE].current.acquire_wait_s  # a cold model may need a drain wait and a whole load first
    asked = time.monotonic()
    try:
        async with request.app[MANAGER].lease(model=model, kind=kind, keep_alive=keep_alive, trace_id=trace,
                                              num_ctx=num_ctx, timeout=wait,
                                              queued=queued.heard if queued else None) as held:
            record_of(request).leased(held.reply.model, held.reply.load_s, time.monotonic() - asked)
            return await _work(request, work, held, trace, queued)
    except ManagerTimeout:  # a deaf manager fails requests at once (heartbeats): this one waited its turn too long
        raise ApiError(503, f"{model} did not become free within {wait:.0f}s: it is loading or busy with the "
                       "requests queued ahead; retry later", code="concurrency_limit", retry_after=10) from None


async def _work(request: web.Request, work: Callable[[Engine], Awaitable[T]], held: Holding, trace: str,
                queued: QueuedStream | None) -> T:
    """Run the work on the held lease; the lease's outcome says how it ended."""
    engine = Engine(request, held.reply, trace)
    try:
        if queued is not None:
            engine.response = await queued.settled()
        result = await work(engine)
    except EngineGone:
        held.outcome = LeaseOutcome.ENGINE_GONE  # the manager fails the slot before our next acquire
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        held.outcome = LeaseOutcome.CLIENT_GONE
        raise
    except ApiError:
        held.outcome = LeaseOutcome.ENGINE_GONE if engine.gone else LeaseOutcome.UPSTREAM_ERROR
        raise
    if engine.gone:
        held.outcome = LeaseOutcome.ENGINE_GONE
    elif engine.failed:
        held.outcome = LeaseOutcome.UPSTREAM_ERROR
    return result


def engine_error(status: int, data: bytes) -> ApiError:
    """The engine's own error, as an ApiError with the engine's status and message."""
    try:
        err = json.loads(data).get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        code, message = err.get("code"), _message_of(err)
        if status == 500 and message.startswith("Failed to parse"):
            status = 400  # llama-server answers 500 for request fields it cannot read: the caller's error
        return ApiError(status, message, code=None if code is None else str(code), param=err.get("param"))
    text = data.decode(errors="replace").strip()[:500] or "engine error"
    return ApiError(status, text, code="engine_error")


def _message_of(err: object) -> str:
    if isinstance(err, dict):
        return str(err.get("message", "engine error"))
    return str(err)
