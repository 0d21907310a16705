"""Reading an SSE response in tests: (event name, data) pairs as they arrive."""

from __future__ import annotations

import json
from typing import AsyncIterator

import aiohttp


async def read_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, dict]]:
    """Yield (event name, data) from an SSE response; the name is None for an unnamed event."""
    name = None
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[5:])
            name = None
