"""Native /lf/logs handlers: the list of LMForge's logs, the tail of one, and one followed live as SSE.

Admin routes (gateway/middleware/auth.py). A log is named by its file in the logs directory, never by a path:
any other name is 404 log_not_found before the filesystem is touched (gateway/logtail.py checks it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time

from aiohttp import web

from gateway.errors import ApiError
from gateway.keys import PATHS, STREAMS
from gateway.logtail import LogFollower, list_logs, read_tail
from gateway.sse import PING, SSE_HEADERS, frame

TAIL_LINES, MAX_LINES = 200, 5000
PING_S = 15.0  # a ping after this long without a line, never more often
POLL_S = 0.25  # how often a followed log is looked at
NAME_SHOWN = 64  # a hostile name is echoed in the error this far at most


async def logs_list(request: web.Request) -> web.Response:
    logs = await asyncio.to_thread(list_logs, request.app[PATHS].logs)
    return web.json_response({"logs": [dataclasses.asdict(log) for log in logs]})


async def log_tail(request: web.Request) -> web.Response:
    """GET /lf/logs/{name}?lines=N: the last N lines (200 by default), from the last 2 MiB of the log at most."""
    lines = _lines(request, TAIL_LINES, low=1)
    name = request.match_info["name"]
    found = await asyncio.to_thread(read_tail, request.app[PATHS].logs, name, lines)
    if found is None:
        raise _not_found(name)
    return web.Response(text="".join(f"{line}\n" for line in found), content_type="text/plain", charset="utf-8")


async def log_stream(request: web.Request) -> web.StreamResponse:
    """GET /lf/logs/{name}/stream[?lines=N]: N lines of backlog (none by default), then every line appended,
    one `data: {"line": ...}` frame each, across rotations; a ping after 15 s without a line."""
    backlog = _lines(request, 0, low=0)
    name = request.match_info["name"]
    follower = await asyncio.to_thread(LogFollower.open, request.app[PATHS].logs, name)
    if follower is None:
        raise _not_found(name)
    closing: asyncio.Queue = asyncio.Queue()  # close_streams (handlers.py) puts CLOSE on it at shutdown
    request.app[STREAMS].add(closing)
    try:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        await _send(resp, await asyncio.to_thread(follower.backlog, backlog))
        await _follow(request, resp, follower, closing)
    except ConnectionResetError:
        pass  # the client left while a frame was on its way
    finally:
        request.app[STREAMS].discard(closing)
        await asyncio.to_thread(follower.close)  # waits for a poll still reading, off the loop
    return resp


async def _follow(request: web.Request, resp: web.StreamResponse, follower: LogFollower,
                  closing: asyncio.Queue) -> None:
    """Until the gateway shuts down, the client leaves or the name stops leading to a log."""
    last_sent = time.monotonic()
    while follower.following and not _client_gone(request):
        lines = await asyncio.to_thread(follower.poll)
        if lines:
            await _send(resp, lines)
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= PING_S:
            await resp.write(PING)
            last_sent = time.monotonic()
        if not closing.empty():
            return
        if follower.behind:
            continue
        try:
            await asyncio.wait_for(closing.get(), POLL_S)
            return
        except asyncio.TimeoutError:
            pass


async def _send(resp: web.StreamResponse, lines: list[str]) -> None:
    if lines:
        await resp.write(b"".join(frame(None, {"line": line}) for line in lines))


def _client_gone(request: web.Request) -> bool:
    """A handler that writes nothing while the log is quiet cannot otherwise tell that its client hung up."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _lines(request: web.Request, default: int, *, low: int) -> int:
    raw = request.query.get("lines")
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw) or not low <= int(raw) <= MAX_LINES:
        raise ApiError(400, f"lines must be an integer from {low} to {MAX_LINES}; got {raw[:NAME_SHOWN]!r}",
                       code="invalid_request", param="lines")
    return int(raw)


def _not_found(name: str) -> ApiError:
    shown = repr(name[:NAME_SHOWN]) + ("..." if len(name) > NAME_SHOWN else "")
    return ApiError(404, f"no log named {shown}; GET /lf/logs (or `lmforge logs`) lists them",
                    code="log_not_found", param="name")
