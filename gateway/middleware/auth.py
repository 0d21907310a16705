"""Who may do what: Bearer keys scoped `inference` or `admin`, and trusted networks that need no key.

Every route has one access class (`access_of`; a route not named there is
ADMIN, so a new route is closed until someone opens it):

- PUBLIC: /health (which says only up or down to untrusted callers) and the dashboard's files under /ui (a
  shell holding no data: the page asks for a key when /lf refuses it);
- INFERENCE: chat, completions, embeddings, rerank, show, the model lists and the catalog;
- MONITOR: status, its stream, hardware and metrics;
- ADMIN: load, unload, pull, create, copy, delete, config, logs;
- LOCAL: /lf/shutdown and /lf/model/import (it reads files by path), from this
  machine only, whatever the key; otherwise as ADMIN.

A caller on this machine is one from loopback or from the address it connected
to (`Peer.local`: bound to one LAN address, this machine's clients come from it).
A caller in `trusted_networks` (default: loopback only) may use INFERENCE and
MONITOR without a key, and a trusted caller on this machine ADMIN too; anyone
else needs a key whose scope covers the route. A key that matches nothing is ignored
from a trusted network (local apps send placeholders like "sk-no-key") and
refused from anywhere else. Keys are compared in constant time, by digest.
Keys and networks are those in force (gateway/live.py): a change of
config.toml holds from the next request on.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
from dataclasses import dataclass

from aiohttp import web

from gateway.errors import ApiError
from gateway.keys import live_settings
from gateway.middleware.peers import Network, Peer, caller_address, local_address, networks, within
from manager.config import Settings

log = logging.getLogger("lmforge.gateway")

# What the auth middleware found out about the caller; /health reads it.
PEER = web.RequestKey("peer", Peer)
# The (access, name) of the key the caller presented, when it matched one; PATCH /lf/config reads it.
CALLER_KEY = web.RequestKey("caller_key", tuple)


class Access(enum.IntEnum):
    PUBLIC = 0
    INFERENCE = 1
    MONITOR = 2
    ADMIN = 3
    LOCAL = 4


INFERENCE_PATHS = {
    "/", "/openapi.json", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
    "/v1/responses", "/v1/rerank", "/rerank", "/v1/messages", "/v1/messages/count_tokens", "/api/chat",
    "/api/generate", "/api/embed", "/api/embeddings", "/api/rerank", "/api/show", "/api/tags", "/api/ps",
    "/api/version", "/lf/model/list", "/lf/catalog",
}
MONITOR_PATHS = {"/lf/status", "/lf/status/stream", "/lf/hardware", "/metrics"}
LOCAL_PATHS = {"/lf/shutdown", "/lf/model/import"}


def access_of(path: str) -> Access:
    if path == "/health" or path == "/ui" or path.startswith("/ui/"):
        return Access.PUBLIC
    if path in INFERENCE_PATHS or path.startswith("/v1/models/"):
        return Access.INFERENCE
    if path in MONITOR_PATHS:
        return Access.MONITOR
    if path in LOCAL_PATHS:
        return Access.LOCAL
    return Access.ADMIN


class Keys:
    """The configured keys, by sha256 digest, each with the highest access its scope grants."""

    def __init__(self, settings: Settings) -> None:
        pairs = [(settings.api_key, "admin", "api_key")] if settings.api_key else []
        pairs += [(k.key, k.scope, k.name or f"api_keys[{i}]") for i, k in enumerate(settings.api_keys)]
        self._keys = [(_digest(key), Access.ADMIN if scope == "admin" else Access.INFERENCE, name)
                      for key, scope, name in pairs]

    def match(self, presented: str) -> tuple[Access, str] | None:
        """The access and name of the key presented, or None; every key is compared, so timing says nothing."""
        digest, found = _digest(presented), None
        for key, access, name in self._keys:
            if hmac.compare_digest(digest, key):
                found = (access, name)
        return found

    @property
    def has_admin(self) -> bool:
        return any(access == Access.ADMIN for _, access, _ in self._keys)


@dataclass(frozen=True)
class Trust:
    """Who gets in, as the settings in force say: built once per change of them (gateway/live.py)."""

    keys: Keys
    trusted: tuple[Network, ...]
    proxies: tuple[Network, ...]


def trust_of(settings: Settings) -> Trust:
    return Trust(Keys(settings), networks(settings.trusted_networks), networks(settings.trusted_proxies))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def presented_key(request: web.Request) -> str | None:
    """`Authorization: Bearer <key>`, or Anthropic's `x-api-key: <key>`."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def network_access(peer: Peer) -> Access:
    """What the caller's network alone allows."""
    if peer.trusted:
        return Access.ADMIN if peer.local else Access.MONITOR
    return Access.PUBLIC


def decide(access: Access, peer: Peer, key: tuple[Access, str] | None, presented: bool) -> ApiError | None:
    """None to let the request through; otherwise the refusal (401 no or bad key, 403 out of scope or not local)."""
    if access == Access.LOCAL:
        if not peer.local:
            return ApiError(403, "this route answers only on the machine LMForge runs on", code="loopback_only")
        access = Access.ADMIN
    allowed = max(network_access(peer), key[0] if key else Access.PUBLIC)
    if access <= allowed:
        return None
    if key is not None:
        return ApiError(403, f"the key {key[1]!r} is scoped to inference; this route needs an admin key",
                        code="insufficient_scope")
    if presented:
        return _unauthorized("the API key is not valid", "invalid_api_key")
    if peer.trusted and access == Access.ADMIN:
        return _unauthorized("changes to LMForge need an admin key from outside this machine", "missing_api_key")
    return _unauthorized(f"{peer} is not in trusted_networks: send Authorization: Bearer <key>", "missing_api_key")


def require_local(request: web.Request, what: str) -> None:
    """For a route open to remote admins that reads a file by path in one of its forms (/api/create FROM /path):
    that form, like /lf/model/import, is for a caller on this machine only."""
    if not request[PEER].local:  # the caller's address: behind a trusted proxy, the one it forwards for
        raise ApiError(403, f"{what} reads files on the LMForge machine and is allowed from that machine only",
                       code="loopback_only")


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": 'Bearer realm="lmforge"'})


def route_template(request: web.Request) -> str | None:
    """The template of the route that will answer (`/v1/models/{id}`); None when no route matches."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def route_path(request: web.Request) -> str:
    """The route's template, so access follows what the router chose, however the path was spelled; a request
    that matches no route is classed by its path (and gets 404 or 401)."""
    return route_template(request) or request.path


def setup_auth(app: web.Application) -> None:
    live = live_settings(app)

    @web.middleware
    async def auth_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        trust = live.view(trust_of)  # keys and networks as they stand now: they change live
        address = caller_address(request, trust.proxies)
        peer = request[PEER] = Peer(address, within(address, trust.trusted), local_address(request))
        token = presented_key(request)
        key = trust.keys.match(token) if token else None
        if key is not None:
            request[CALLER_KEY] = key
        refusal = decide(access_of(route_path(request)), peer, key, token is not None)
        if refusal is not None:
            log.info("refused %s %s from %s: %s", request.method, request.path, peer, refusal.code)
            raise refusal
        return await handler(request)

    app.middlewares.append(auth_middleware)
