"""The browser is not a way in: requests from foreign web pages are refused, and CORS is answered only for friends.

A page the user happens to have open can send "simple" requests (a text/plain
POST, a GET) to 127.0.0.1 without any preflight, so refusing the preflight is
not enough: any request that carries an `Origin` outside the allowed set is
refused, whatever its method or content type. Requests without an Origin
(curl, SDKs, servers) are not browsers' and pass untouched.

Allowed: the server's own origin (its dashboard), pages on localhost,
`*.localhost` and loopback addresses on any port, desktop app schemes (Electron
`app://`, Tauri, VS Code webviews), and `allowed_origins` (exact origins,
`scheme://*` for a whole scheme such as a browser extension's, or `*` for any).
The opaque origin `null` (sandboxed frames, `data:` pages) is never allowed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from gateway.errors import ApiError
from gateway.keys import live_settings
from gateway.middleware.peers import parse_address
from manager.config import Settings

APP_SCHEMES = {"app", "tauri", "vscode-webview", "vscode-file"}
METHODS = "GET, HEAD, POST, PATCH, DELETE, OPTIONS"
# Headers a page may read from our answers besides the CORS-safelisted ones.
EXPOSED = "Retry-After, X-Request-Id, WWW-Authenticate"
PREFLIGHT_MAX_AGE_S = 600
ORIGIN = web.RequestKey("cors_origin", str)  # the allowed Origin of this request, for the response's headers


class OriginRule:
    def __init__(self, allowed: list[str]) -> None:
        self.any = "*" in allowed
        self.exact = {entry.lower().rstrip("/") for entry in allowed if not entry.endswith("://*")}
        self.schemes = APP_SCHEMES | {entry[:-4].lower() for entry in allowed if entry.endswith("://*")}

    def allows(self, origin: str, own: str) -> bool:
        origin = origin.strip().lower()
        if origin == "null":
            return False
        if self.any or origin in self.exact or origin == own:
            return True
        parts = urlsplit(origin)
        if parts.scheme in self.schemes:
            return True
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        name = parts.hostname
        address = parse_address(name)
        return name == "localhost" or name.endswith(".localhost") or (address is not None and address.is_loopback)


def own_origin(request: web.Request) -> str:
    """This server's origin as the page that asks names it: a page LMForge itself served (/ui) is always allowed."""
    return f"{request.scheme}://{request.headers.get('Host', '')}".lower()


def origin_rule(settings: Settings) -> OriginRule:
    return OriginRule(settings.allowed_origins)


def setup_origin(app: web.Application) -> None:
    live = live_settings(app)

    @web.middleware
    async def origin_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        rule = live.view(origin_rule)  # allowed_origins as it stands now: it changes live
        if not rule.allows(origin, own_origin(request)):
            raise ApiError(403, f"requests from the web page at {origin[:200]!r} are not allowed; to let that page "
                           "use LMForge, add its origin to allowed_origins in config.toml", code="origin_not_allowed")
        request[ORIGIN] = "*" if rule.any else origin
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return preflight(request)
        return await handler(request)

    app.middlewares.append(origin_middleware)
    app.on_response_prepare.append(_cors_headers)


def preflight(request: web.Request) -> web.Response:
    headers = {
        "Access-Control-Allow-Methods": METHODS,
        "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
    }
    if request.headers.get("Access-Control-Request-Private-Network") == "true":
        headers["Access-Control-Allow-Private-Network"] = "true"  # Chrome's Private Network Access
    return web.Response(status=204, headers=headers)


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer to an allowed page (errors and streams included) says so, so the page can read it."""
    origin = request.get(ORIGIN)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSED
    response.headers.add("Vary", "Origin")

