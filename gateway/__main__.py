"""`python -m gateway`: serve the HTTP API on the configured host and port."""

from __future__ import annotations

import sys

from aiohttp import web

from gateway.app import make_app
from manager.config import Paths, Settings
from manager.startup import run_process

# Fits inside supervisord's stopwaitsecs for the gateway (deploy/).
SHUTDOWN_TIMEOUT_S = 10.0


def serve(settings: Settings, paths: Paths) -> int:
    try:
        web.run_app(
            make_app(settings, paths), host=settings.host, port=settings.port,
            handler_cancellation=True,  # a client that goes away cancels its upstream request
            shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None, print=None,
        )
    except OSError as exc:
        print(f"lmforge gateway: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_process("gateway", serve))
