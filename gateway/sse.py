"""Server-sent events framing, shared by every streaming endpoint that is not a proxy."""

from __future__ import annotations

import json

PING = b"event: ping\ndata: {}\n\n"


def frame(event: str | None, data: object) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
