"""Every AppKey the gateway stores on its web.Application, in one place."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from catalog.store import ModelStore
from manager.client import ManagerClient
from manager.config import Paths, Settings

SETTINGS = web.AppKey("settings", Settings)
PATHS = web.AppKey("paths", Paths)
MANAGER = web.AppKey("manager", ManagerClient)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
# The model index, read (never written) by the gateway to gate requests before any engine work.
STORE = web.AppKey("store", ModelStore)
# Queues of open SSE status streams, told to close first on shutdown so draining does not wait on them.
STREAMS = web.AppKey("streams", set)
