"""Turns every failure into an error body in the calling API's own format.

OpenAI-style routes (and /lf) get the OpenAI error object, Ollama-style /api
routes {"error": "..."}, Anthropic's /v1/messages its own envelope.
Unexpected exceptions are logged and become 500.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.errors import ApiError, dialect_of, from_manager
from gateway.request_log import RECORD
from manager.client import ManagerError, ManagerUnavailable

log = logging.getLogger("lmforge.gateway")


def render(request: web.Request, err: ApiError) -> web.Response:
    if (record := request.get(RECORD)) is not None:  # counted by reason, and kept in the request log
        record.failed(err.status, err.message, err.code)
    return err.response(dialect_of(request.path))


@web.middleware
async def error_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except ApiError as err:
        return render(request, err)
    except (ManagerError, ManagerUnavailable) as exc:
        return render(request, from_manager(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"no route {request.method} {request.path}",
                   405: f"method {request.method} is not allowed on {request.path}"}.get(exc.status, exc.reason)
        return render(request, ApiError(exc.status, message, code=exc.reason.lower().replace(" ", "_")))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(request, ApiError(500, "internal gateway error; see the gateway log", code="internal"))


def setup_errors(app: web.Application) -> None:
    app.middlewares.append(error_middleware)
