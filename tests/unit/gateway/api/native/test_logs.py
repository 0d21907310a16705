"""The /lf/logs routes over real HTTP, on the gateway's own route table: hostile names and bad `lines` refused in
the API's error format, the routes closed to all but admins, pings no more often than PING_S, and a followed log
that lets the gateway shut down at once."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway.api.native import logs as log_routes
from gateway.api.native.routes import setup_native_routes
from gateway.keys import PATHS, STREAMS
from gateway.middleware.auth import Access, access_of, decide
from gateway.middleware.errors import setup_errors
from gateway.middleware.peers import Peer
from manager.config import Paths
from tests.support.sse import read_events

HOSTILE_PATHS = [
    "/lf/logs/..%2f..%2fetc%2fpasswd", "/lf/logs/../../etc/passwd", "/lf/logs/..%2F..%2Fconfig.toml",
    "/lf/logs/%2e%2e", "/lf/logs/..", "/lf/logs/manager%00", "/lf/logs/manager%2f..%2fmanager",
    "/lf/logs/%2fetc%2fpasswd", "/lf/logs/" + "a" * 5000, "/lf/logs/secret", "/lf/logs/manager.log",
    "/lf/logs/manager.log.1", "/lf/logs/.hidden", "/lf/logs/%2e%2e/stream", "/lf/logs/..%2f..%2fsecret/stream",
    "/lf/logs/a/b/stream", "/lf/logs/%E2%80%AE", "/lf/logs/link",
]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home" / "logs").mkdir(parents=True)
    (tmp_path / "home" / "logs" / "manager.log").write_bytes(b"".join(b"line %d\n" % n for n in range(300)))
    (tmp_path / "home" / "logs" / "manager.log.1").write_bytes(b"older\n")
    (tmp_path / "home" / "config.toml").write_bytes(b"api_key = 'do-not-show'\n")
    (tmp_path / "secret.log").write_bytes(b"password\n")
    (tmp_path / "home" / "logs" / "link.log").symlink_to(tmp_path / "secret.log")
    return tmp_path / "home"


@pytest.fixture
async def gateway(home: Path) -> AsyncIterator[tuple[web.AppRunner, str]]:
    """The native routes with the error middleware, served on a free port."""
    app = web.Application()
    app[PATHS] = Paths(home)
    app[STREAMS] = set()
    setup_errors(app)
    setup_native_routes(app)
    runner = web.AppRunner(app, shutdown_timeout=10.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield runner, f"127.0.0.1:{port}"
    await runner.cleanup()


def raw_get(address: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte as given (no client normalises or re-encodes it)."""
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_names_that_are_not_a_log_in_the_logs_directory_get_404_log_not_found(gateway, path: str) -> None:
    status, body = await asyncio.to_thread(raw_get, gateway[1], path)
    assert status == 404, body
    error = json.loads(body)["error"]
    assert error["code"] == "log_not_found" and len(error["message"]) < 200
    assert b"password" not in body and b"do-not-show" not in body


# %D9%A3 is ٣, a digit to Python's int().
@pytest.mark.parametrize("lines", ["abc", "0", "5001", "-1", "1e3", "+5", "%205", "99999999999999999999", "", "%D9%A3"])
async def test_lines_out_of_range_or_not_an_integer_is_400_naming_lines(gateway, lines: str) -> None:
    for path in ("/lf/logs/manager", "/lf/logs/manager/stream"):
        if path.endswith("stream") and lines == "0":
            continue  # no backlog: allowed on the stream
        status, body = await asyncio.to_thread(raw_get, gateway[1], f"{path}?lines={lines}")
        assert status == 400, (path, lines, body)
        assert json.loads(body)["error"]["param"] == "lines"


async def test_the_list_and_a_tail_within_the_bounds(gateway) -> None:
    status, body = await asyncio.to_thread(raw_get, gateway[1], "/lf/logs")
    assert status == 200
    assert [(log["name"], log["kind"], log["file"], log["backups"]) for log in json.loads(body)["logs"]] == [
        ("manager", "process", "manager.log", 1)]
    status, body = await asyncio.to_thread(raw_get, gateway[1], "/lf/logs/manager")
    assert status == 200 and body.decode().splitlines() == [f"line {n}" for n in range(100, 300)]  # 200 by default
    status, body = await asyncio.to_thread(raw_get, gateway[1], "/lf/logs/manager?lines=5000")
    assert status == 200 and len(body.decode().splitlines()) == 300


def test_every_log_route_is_for_admins_only() -> None:
    app = web.Application()
    setup_native_routes(app)
    templates = {route.resource.canonical for route in app.router.routes()
                 if route.resource is not None and route.resource.canonical.startswith("/lf/logs")}
    assert templates == {"/lf/logs", "/lf/logs/{name}", "/lf/logs/{name}/stream"}
    lan_trusted = Peer(ipaddress.ip_address("192.168.1.20"), trusted=True)
    for template in templates:
        assert access_of(template) == Access.ADMIN
        refusal = decide(access_of(template), lan_trusted, None, presented=False)
        assert refusal is not None and refusal.status == 401  # trusted for inference and status, not for logs


async def test_a_quiet_stream_pings_no_more_often_than_ping_s(gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_routes, "PING_S", 0.5)
    pings: list[float] = []
    async with aiohttp.ClientSession() as http_:
        async with http_.get(f"http://{gateway[1]}/lf/logs/manager/stream") as resp:
            opened = time.monotonic()
            async for name, _ in read_events(resp):
                assert name == "ping"  # no backlog was asked for, and nothing is written
                pings.append(time.monotonic())
                if len(pings) == 3:
                    break
    gaps = [b - a for a, b in zip([opened, *pings], pings)]
    assert all(gap >= 0.5 - 0.05 for gap in gaps), gaps  # load only makes them longer


async def test_an_open_stream_lets_the_gateway_shut_down_at_once(gateway, home: Path) -> None:
    runner, address = gateway
    async with aiohttp.ClientSession() as http_:
        async with http_.get(f"http://{address}/lf/logs/manager/stream?lines=1") as resp:
            events = read_events(resp)
            assert await events.__anext__() == (None, {"line": "line 299"})
            started = time.monotonic()
            await runner.cleanup()  # waits for open requests up to shutdown_timeout (10 s) unless they end
            assert time.monotonic() - started < 3.0
            assert [event async for event in events] == []  # the stream ended, cleanly
