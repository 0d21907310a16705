"""Every AppKey the gateway stores on its web.Application, in one place."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from catalog.store import ModelStore
from gateway.live import LiveSettings
from gateway.metrics_registry import GatewayMetrics
from gateway.request_log import RequestLog
from manager.client import ManagerClient
from manager.config import Paths, Settings

SETTINGS = web.AppKey("settings", Settings)  # what the gateway started with; LIVE has what is in force now
LIVE = web.AppKey("live_settings", LiveSettings)
PATHS = web.AppKey("paths", Paths)
MANAGER = web.AppKey("manager", ManagerClient)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
# The model index, read (never written) by the gateway to gate requests before any engine work.
STORE = web.AppKey("store", ModelStore)
# Queues of open SSE status streams, told to close first on shutdown so draining does not wait on them.
STREAMS = web.AppKey("streams", set)
# The last API requests (GET /lf/requests), and the gateway's Prometheus figures (gateway/metrics.py).
REQUEST_LOG = web.AppKey("request_log", RequestLog)
METRICS = web.AppKey("metrics", GatewayMetrics)


def live_settings(app: web.Application) -> LiveSettings:
    """The app's LiveSettings, made from app[SETTINGS] by the first middleware set up (before the app is frozen)."""
    if LIVE not in app:
        app[LIVE] = LiveSettings(app[SETTINGS])
    return app[LIVE]
