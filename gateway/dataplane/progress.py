"""Load progress told inside a streamed answer, for clients that ask: a chat UI can show "loading qwen3 43 %"
instead of a silent wait.

Opt-in, because the stream then starts (200) before the model is ready, and a load that fails ends it with the
dialect's error frame instead of a 503: `stream_load_progress = true` in config, or per request the header
`X-LMForge-Progress: 1` (and `0` to refuse it where config turned it on). Each dialect carries the notes in a
form its clients already skip: SSE comment lines on /v1 (`: lmforge load {...}`), status lines on Ollama's
/api (like its pull's, with an empty message and done false), and `ping` events on /v1/messages.
The notes are the manager's LoadProgressEvents for the request's model, read from the event bus.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from aiohttp import web

from gateway.keys import MANAGER, live_settings
from gateway.sse import frame
from manager.client import ManagerClient
from manager.protocol import LoadProgressEvent, SlotKind

HEADER = "X-LMForge-Progress"
_encode = msgspec.json.encode


def wanted(request: web.Request) -> bool:
    asked = request.headers.get(HEADER, "").strip().lower()
    if asked in ("1", "true", "yes", "on"):
        return True
    if asked in ("0", "false", "no", "off"):
        return False
    return live_settings(request.app).current.stream_load_progress


def note_of(event: LoadProgressEvent) -> dict[str, Any]:
    return {"model": event.model, "stage": event.stage, "progress": event.progress, "detail": event.detail}


def text_of(note: dict[str, Any]) -> str:
    """"loading a: loading_weights 43 %": the line a person reads."""
    percent = f" {round(note['progress'] * 100)} %" if note.get("progress") is not None else ""
    return f"loading {note['model']}: {note['stage']}{percent}"


def sse_comment(note: dict[str, Any]) -> bytes:
    """/v1: a comment line, which every SSE client skips; the JSON after "lmforge load" is for those that read it."""
    return b": lmforge load " + _encode(note) + b"\n\n"


def anthropic_ping(note: dict[str, Any]) -> bytes:
    """/v1/messages: a ping event, which Anthropic's clients skip, carrying the note beside its type."""
    return frame("ping", {"type": "ping", "lmforge": {"load": note}})


async def follow(manager: ManagerClient, model: str, kind: SlotKind, tell: Any) -> None:
    """Hand `tell` a note for each load event of the model until cancelled (when the lease is settled)."""
    queue = manager.subscribe()
    try:
        while True:
            event = await queue.get()
            if isinstance(event, LoadProgressEvent) and event.model == model and event.kind == kind:
                tell(note_of(event))
    finally:
        manager.unsubscribe(queue)


def start_following(request: web.Request, model: str, kind: SlotKind, tell: Any) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(follow(request.app[MANAGER], model, kind, tell))


async def stop_following(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
