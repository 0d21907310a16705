"""GET /lf/requests: the request log (gateway/request_log.py), newest first."""

from __future__ import annotations

import re

from aiohttp import web

from gateway.errors import ApiError
from gateway.keys import REQUEST_LOG

MAX_LIMIT = 10_000


async def recent_requests(request: web.Request) -> web.Response:
    """`?limit=N` (default 100) of the newest, `&model=M` for one model's."""
    raw = request.query.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not 1 <= int(raw) <= MAX_LIMIT:  # ASCII digits only
        raise ApiError(400, f"limit must be a whole number 1-{MAX_LIMIT}, got {raw[:40]!r}", code="invalid_request",
                       param="limit")
    records = request.app[REQUEST_LOG].recent(int(raw), request.query.get("model"))
    return web.json_response({"requests": [r.to_json() for r in records]})
