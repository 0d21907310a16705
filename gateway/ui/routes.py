"""The dashboard at /ui: three committed files (the page, its script, its style), served under a strict CSP.

The files are only a shell: every figure on the page comes from /lf with the
caller's own key, so they are served to anyone (auth.py: /ui is PUBLIC), and a
caller without a key sees the page ask for one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.errors import ApiError

STATIC = Path(__file__).with_name("static")
# The allowlist: nothing else under /ui is served, whatever lies beside these files.
FILES = {
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
# Everything from this origin only: no inline script or style, no frames, no form posts, nothing from the internet.
CSP = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "img-src 'self'",
    "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
))
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidated on every load (a 304 when unchanged), so an upgrade never leaves a stale script in the cache.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(directory: Path = STATIC) -> dict[str, Asset]:
    """Read once at start: the files are part of the installed package (pyproject package-data)."""
    assets = {}
    for name, content_type in FILES.items():
        body = (directory / name).read_bytes()
        assets[name] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


def answer(request: web.Request, asset: Asset) -> web.Response:
    headers = {**HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers)


def setup_ui_routes(app: web.Application) -> None:
    assets = load_assets()

    async def page(request: web.Request) -> web.Response:
        return answer(request, assets["index.html"])

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if name not in assets:
            raise ApiError(404, f"the dashboard has no file {name[:100]!r}", code="not_found")
        return answer(request, assets[name])

    app.router.add_get("/ui", page)
    app.router.add_get("/ui/", page)
    app.router.add_get("/ui/{file}", asset)
