"""GET and PATCH /lf/config: the settings in force with secrets redacted, and a checked change of config.toml
that the gateway applies at once (manager/config_file.py writes it; manager/config_keys.py says what is live).

Both are ADMIN routes (gateway/middleware/auth.py). A change that decides who
gets in (config_keys.GUARDED) needs an admin key even from loopback, where no
key is needed otherwise: a page or program on this machine that may use the
API must not be able to open it to the network. A change naming a file or a
program on this machine is taken from this machine only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from gateway.dataplane.validate import read_json
from gateway.errors import ApiError
from gateway.keys import LIVE, PATHS
from gateway.middleware.auth import CALLER_KEY, PEER, Access, trust_of
from manager import config_file
from manager.config import ConfigError
from manager.config_keys import Guard

log = logging.getLogger("lmforge.gateway")


async def config_get(request: web.Request) -> web.Response:
    live = request.app[LIVE]
    view = await asyncio.to_thread(config_file.describe, request.app[PATHS], live.started, live.current)
    return web.json_response(view)


async def config_patch(request: web.Request) -> web.Response:
    change = _nested(await _change_of(request))
    check_access(request, change)
    live, paths = request.app[LIVE], request.app[PATHS]
    async with live.lock:  # read, merge, write and apply as one: no other change of the file comes between
        try:
            written = await asyncio.to_thread(config_file.update, paths, change)
        except config_file.FileUnreadable as exc:
            raise ApiError(409, str(exc), code="config_unreadable") from None
        except ConfigError as exc:
            raise ApiError(400, f"{exc}; config.toml was not changed", code="invalid_config") from None
        except OSError as exc:
            raise ApiError(500, f"could not write {paths.config}: {exc.strerror or exc}; it was not changed",
                           code="config_not_written") from None
        applied_here = live.apply(written.effective)
    report = written.report()
    if report["changed"]:
        log.info("config.toml changed by PATCH /lf/config from %s: %s (the gateway applied: %s)", request[PEER],
                 ", ".join(report["changed"]), ", ".join(applied_here) or "nothing")
    return web.json_response(report)


async def _change_of(request: web.Request) -> dict[str, Any]:
    """A JSON object of the keys to change, like {"keep_alive": "10m"} or {"llama_cpp.ctx_size": 4096}."""
    return await read_json(request)  # empty, not JSON, too deep, not an object: 400


def _nested(change: dict[str, Any]) -> dict[str, Any]:
    try:
        return config_file.nested(change)
    except ConfigError as exc:
        raise ApiError(400, f"{exc}; config.toml was not changed", code="invalid_config") from None


def check_access(request: web.Request, change: dict[str, Any]) -> None:
    guarded = config_file.guard_of(change)
    if local := guarded.get(Guard.LOCAL):
        if not request[PEER].local:
            raise ApiError(403, f"{', '.join(local)} names a file or program on the LMForge machine and can be "
                                "changed from that machine only", code="loopback_only")
    trust = guarded.get(Guard.ADMIN_KEY)
    if not trust:
        return
    key = request.get(CALLER_KEY)
    if key is not None and key[0] == Access.ADMIN:
        return
    names = ", ".join(trust)
    if not request.app[LIVE].view(trust_of).keys.has_admin:
        raise ApiError(403, f"{names} decides who may use LMForge, and no admin key is configured to change it "
                            "over HTTP: edit config.toml, or run `lmforge config set` on the LMForge machine",
                       code="admin_key_required")
    why = f"the key {key[1]!r} is scoped to inference" if key is not None else "no key was sent"
    raise ApiError(403, f"{names} decides who may use LMForge: changing it needs an admin key (Authorization: "
                        f"Bearer <key>) even from this machine, and {why}", code="admin_key_required")
