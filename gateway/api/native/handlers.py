"""Native /lf handlers: status (and its live stream), model switch/unload/list, hardware; /health."""

from __future__ import annotations

import asyncio
import time

import msgspec
from aiohttp import web

from gateway.api.native.schemas import ImportBody, SwitchBody, UnloadBody, parse_body
from gateway.dataplane.gates import installed_name
from gateway.errors import ApiError
from gateway.keys import LIVE, MANAGER, STREAMS
from gateway.middleware.auth import PEER
from gateway.openapi import openapi_document
from gateway.sse import PING, SSE_HEADERS, frame
from gateway.version import VERSION
from manager.client import RESYNC, ManagerUnavailable
from manager.protocol import (
    IMPORT_TIMEOUT_S,
    TOPICS,
    DeleteModelReply,
    DeleteModelRequest,
    Event,
    ImportModelRequest,
    ListModelsRequest,
    LoadReply,
    LoadRequest,
    ManagerStatus,
    ModelReply,
    QueueEvent,
    SnapshotReply,
    SnapshotRequest,
    UnloadReply,
    UnloadRequest,
)

PING_S = 15.0
CLOSE = object()  # put on SSE queues at shutdown


HEALTH_PING_S = 2.0


async def health(request: web.Request) -> web.Response:
    """200 only when the manager answers a request now: a manager that beats but is deaf is not up."""
    manager = request.app[MANAGER]
    up = manager.alive and await manager.ping(HEALTH_PING_S)
    if not request[PEER].trusted:  # up or down, nothing more, to callers outside trusted_networks
        return web.json_response({"status": "ok" if up else "unavailable"}, status=200 if up else 503)
    if up:
        return web.json_response({"status": "ok", "version": VERSION, "manager_epoch": manager.epoch})
    return web.json_response(
        {"status": "unavailable", "version": VERSION,
         "reason": "the gateway cannot reach a manager that answers (lmforge status shows the processes)"},
        status=503, headers={"Retry-After": "2"},
    )


def status_json(status: ManagerStatus) -> dict[str, object]:
    """The snapshot, plus the figures a reader would otherwise compute: idle time, time left, free memory."""
    data = msgspec.to_builtins(status)
    now = time.time()
    for slot in data["slots"]:
        idle = slot["state"] == "ready" and slot["inflight"] == 0
        slot["idle_s"] = round(now - slot["last_used_at"], 1) if idle else 0.0
        slot["expires_in_s"] = round(slot["expires_at"] - now, 1) if slot["expires_at"] else None
    data["budget"]["free_bytes"] = status.budget.free_bytes
    data["uptime_s"] = round(now - status.started_at, 1)
    return data


async def _snapshot(request: web.Request) -> SnapshotReply:
    return await request.app[MANAGER].request(SnapshotRequest)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(VERSION))


async def status(request: web.Request) -> web.Response:
    return web.json_response(status_json((await _snapshot(request)).status))


async def hardware(request: web.Request) -> web.Response:
    return web.json_response(msgspec.to_builtins((await _snapshot(request)).status.hardware))


async def status_stream(request: web.Request) -> web.StreamResponse:
    """A snapshot first, then typed events as they happen; a ping every 15 s of silence."""
    manager = request.app[MANAGER]
    queue = manager.subscribe()  # before the snapshot, so nothing falls between the two
    request.app[STREAMS].add(queue)
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    try:
        seq = await _send_snapshot(request, resp)
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), PING_S)
            except asyncio.TimeoutError:
                await resp.write(PING)
                continue
            if item is CLOSE:
                break
            if item is RESYNC:
                seq = await _send_snapshot(request, resp)
            elif item.seq > seq:
                await resp.write(event_frame(item))
    finally:
        manager.unsubscribe(queue)
        request.app[STREAMS].discard(queue)
    return resp


def event_frame(event: Event) -> bytes:
    """A manager event as the status stream shows it. A queue names its requests by the id their clients are
    answered with (X-Request-Id), in the order they will be served; the manager's names for peers stay inside."""
    if isinstance(event, QueueEvent):
        positions = [{"ahead": i, "request_id": entry.trace_id} for i, entry in enumerate(event.queued)]
        return frame("queue", {"seq": event.seq, "model": event.model, "kind": event.kind, "queued": len(positions),
                               "loading": event.loading, "positions": positions})
    return frame(TOPICS[type(event)].decode(), msgspec.to_builtins(event))


async def _send_snapshot(request: web.Request, resp: web.StreamResponse) -> int:
    try:
        snap = await _snapshot(request)
    except ManagerUnavailable as exc:
        await resp.write(frame("manager", {"available": False, "reason": str(exc)}))
        return 0
    await resp.write(frame("snapshot", {"seq": snap.seq, **status_json(snap.status)}))
    return snap.seq


async def close_streams(app: web.Application) -> None:
    for queue in list(app[STREAMS]):
        queue.put_nowait(CLOSE)


async def model_switch(request: web.Request) -> web.Response:
    body: SwitchBody = parse_body(await request.read(), SwitchBody)
    model = installed_name(request, body.model)  # a short name loads what chat with it would use
    reply: LoadReply = await request.app[MANAGER].request(
        LoadRequest, model=model, kind=body.kind, pin=body.pin, keep_alive=body.keep_alive, num_ctx=body.num_ctx,
        timeout=request.app[LIVE].current.acquire_wait_s,
    )
    return web.json_response({"status": "ready", "model": model, "load_s": round(reply.load_s, 3),
                              "slot": msgspec.to_builtins(reply.slot)})


async def model_unload(request: web.Request) -> web.Response:
    body: UnloadBody = parse_body(await request.read(), UnloadBody, empty_ok=True)
    model = installed_name(request, body.model) if body.model else body.model
    reply: UnloadReply = await request.app[MANAGER].request(UnloadRequest, model=model, kind=body.kind)
    return web.json_response({"status": "unloading" if reply.unloaded else "nothing_loaded",
                              "unloaded": list(reply.unloaded)})


async def model_list(request: web.Request) -> web.Response:
    reply = await request.app[MANAGER].request(ListModelsRequest)
    return web.json_response({"models": msgspec.to_builtins(reply.models)})


async def model_import(request: web.Request) -> web.Response:
    """It reads files by path on this machine: the auth middleware lets only a caller there (Access.LOCAL) in."""
    body: ImportBody = parse_body(await request.read(), ImportBody)
    for field in ("path", "mmproj"):
        value = getattr(body, field)
        if value and not value.startswith("/"):
            raise ApiError(400, f"{field} must be an absolute path, got {value!r}", code="invalid_request", param=field)
    reply: ModelReply = await request.app[MANAGER].request(
        ImportModelRequest, path=body.path, name=body.name, mmproj=body.mmproj, timeout=IMPORT_TIMEOUT_S)
    return web.json_response({"status": "imported", "model": msgspec.to_builtins(reply.entry)})


async def model_delete(request: web.Request) -> web.Response:
    """Unloads the model, then removes it from the index and its files from the store."""
    reply: DeleteModelReply = await request.app[MANAGER].request(DeleteModelRequest,
                                                                  model=installed_name(request, request.match_info["name"]))
    return web.json_response({"status": "deleted", "model": reply.model})
