"""The outermost middleware: every request gets its record (gateway/request_log.py) and its id before anything
can refuse it, so that refusals are counted too; when its answer has been sent it is counted in the metrics,
logged with its id, and, if it was an API request, kept in the request log."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from gateway.keys import METRICS, REQUEST_LOG, live_settings
from gateway.metrics_registry import GatewayMetrics
from gateway.middleware.auth import route_template
from gateway.request_log import RECORD, RequestLog, RequestRecord, dialect_of_route, new_id, redacted_body

log = logging.getLogger("lmforge.gateway")

CLIENT_GONE = 499  # nginx's status for a client that left before its answer ended


def route_of(request: web.Request) -> str:
    """The template of the route that matched, never the path itself: scanners cannot grow the label set."""
    return route_template(request) or "unmatched"


def setup_metrics(app: web.Application) -> None:
    app[METRICS] = GatewayMetrics()
    app[REQUEST_LOG] = RequestLog(live_settings(app).current.request_log_size)

    @web.middleware
    async def metrics_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        route = route_of(request)
        record = request[RECORD] = RequestRecord(new_id(request), request.method, route, dialect_of_route(route))
        metrics = request.app[METRICS]
        metrics.in_flight.inc()
        try:
            resp = await handler(request)
            record.status = record.status or resp.status
            if not resp.prepared:
                resp.headers.setdefault("X-Request-Id", record.id)
            return resp
        except web.HTTPException as exc:  # a redirect: the error middleware answers every failure itself
            record.status = exc.status
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            if not record.delivered:  # one that hangs up after the last frame (after [DONE]) had its answer
                record.outcome, record.status = "client_gone", CLIENT_GONE
            raise
        finally:
            metrics.in_flight.dec()
            _finish(request, record, metrics)

    app.middlewares.append(metrics_middleware)


def _finish(request: web.Request, record: RequestRecord, metrics: GatewayMetrics) -> None:
    record.total_ms = round((time.monotonic() - record.started) * 1000, 1)
    metrics.observe(record)  # marks refusals as "rejected"
    if not record.outcome:
        record.outcome = "ok" if record.status < 400 else "error"
    if record.dialect is None:
        return
    settings = live_settings(request.app).current
    if settings.request_log_bodies and record.outcome not in ("ok", "client_gone"):
        # Only a body a handler read already: reading one now could be what was refused (too large, too slow).
        data = getattr(request, "_read_bytes", None)
        if data:
            record.body = redacted_body(data)
    request.app[REQUEST_LOG].resize(settings.request_log_size)
    request.app[REQUEST_LOG].add(record)
    log.info("request %s %s %s -> %d %s%s %.0f ms", record.id, record.method, record.route, record.status,
             record.outcome, f" model={record.model}" if record.model else "", record.total_ms)
