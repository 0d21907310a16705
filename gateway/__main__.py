"""`python -m gateway`: serve the HTTP API on the configured host and port, over TLS when configured.

Not web.run_app: the runner must build each connection's protocol with its
deadlines (gateway/middleware/deadlines.py), so the serve loop is spelled out
here, in aiohttp's documented order: setup, site, wait for SIGTERM or SIGINT,
cleanup (which drains in-flight requests for up to SHUTDOWN_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import sys

from aiohttp import web

from gateway.app import make_app
from gateway.middleware.deadlines import DeadlineRunner
from manager.config import Paths, Settings
from manager.startup import run_process

# Fits inside supervisord's stopwaitsecs for the gateway (deploy/).
SHUTDOWN_TIMEOUT_S = 10.0


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server side of HTTPS from tls_cert and tls_key (PEM), TLS 1.2 or later; None when they are unset."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)  # absolute paths (manager/config.py)
    return context


async def run(settings: Settings, paths: Paths, tls: ssl.SSLContext | None) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a stop asked for during setup is kept
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    runner = DeadlineRunner(make_app(settings, paths), shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        await site(runner, settings, tls).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def site(runner: web.BaseRunner, settings: Settings, tls: ssl.SSLContext | None) -> web.BaseSite:
    """Where the gateway listens. `::` means every address, IPv4 too, as it does for Ollama: asyncio would bind
    it IPv6-only, so that socket is made here (IPv4 callers then appear as ::ffff:a.b.c.d; peers.py maps them)."""
    if settings.host.strip("[]") != "::":
        return web.TCPSite(runner, settings.host, settings.port, ssl_context=tls)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(("::", settings.port))
    except OSError:
        sock.close()
        raise
    return web.SockSite(runner, sock, ssl_context=tls)


def serve(settings: Settings, paths: Paths) -> int:
    try:
        tls = tls_context(settings)
    except ssl.SSLError as exc:  # before OSError: it is one
        detail = f" ({exc.reason})" if exc.reason else ""
        return _refused(f"cannot use tls_cert {settings.tls_cert} and tls_key {settings.tls_key}: they are not "
                        f"a PEM certificate and its private key{detail}")
    except OSError as exc:
        return _refused(f"cannot use tls_cert {settings.tls_cert} and tls_key {settings.tls_key}: {exc.strerror}")
    try:
        asyncio.run(run(settings, paths, tls))
    except OSError as exc:
        return _refused(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}")
    return 0


def _refused(why: str) -> int:
    print(f"lmforge gateway: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(run_process("gateway", serve))
