"""Server-sent events framing, shared by every streaming endpoint that is not a proxy."""

from __future__ import annotations

import msgspec

PING = b"event: ping\ndata: {}\n\n"
_encode = msgspec.json.encode


def frame(event: str | None, data: object) -> bytes:
    """One event: its name line when it has one, then its data as compact JSON on one line."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + _encode(data) + b"\n\n"


SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
