"""The image preflight run in-process against local servers: allowlisted image servers on 127.0.0.1, opened by
port, and a loopback canary that no refused URL may ever reach (it records every connection, and must see none)."""

from __future__ import annotations

import asyncio
import atexit
import base64
import gzip
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Callable, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.dataplane.model import Message
from gateway.errors import ApiError
from gateway.keys import LIVE, METRICS
from gateway.live import LiveSettings
from gateway.metrics_registry import GatewayMetrics
from gateway.preflight.fetcher import USER_AGENT
from gateway.preflight.images import MAX_REMOTE, preflight
from manager.config import Settings
from tests.support.canary import Canary
from tests.support.images import data_url, png

MAX = 64 * 1024
RED = png(4, 4)
TEST_HOST = "images.lmforge-test.example"


@pytest.fixture(autouse=True)
def canary_untouched(canary: Canary) -> Iterator[None]:
    yield
    assert canary.seen() == [], "this test's image URL reached the loopback canary"


class SlowServer:
    """Answers 200 with a Content-Length it never finishes sending; records when a client connects and leaves."""

    def __init__(self) -> None:
        self.connected, self.closed = asyncio.Event(), asyncio.Event()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 4096\r\n\r\n" + RED[:16])
            await writer.drain()
            self.connected.set()
            await reader.read()  # until the client goes away
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            writer.close()


def answer(make: Callable[[], web.Response]) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return make()
    return handler


def redirect(location: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(location)
    return handler


class ImageServer:
    """An aiohttp server of images, redirects and failures; remembers the User-Agent of each request."""

    def __init__(self, canary: Canary, slow: SlowServer) -> None:
        self.canary, self.slow, self.agents = canary, slow, []
        app = web.Application()
        app.router.add_get("/red.png", self.red)
        app.router.add_get("/page.html", answer(lambda: web.Response(text="<html>hi</html>", content_type="text/html")))
        app.router.add_get("/missing.png", answer(lambda: web.Response(status=404, text="no such image")))
        app.router.add_get("/missing-once-slow-is-busy", self.missing_once_slow_is_busy)
        app.router.add_get("/big.png", answer(lambda: web.Response(body=RED + b"\0" * MAX, content_type="image/png")))
        app.router.add_get("/big-chunked.png", self.big_chunked)
        app.router.add_get("/hop/{n}", self.hop)
        app.router.add_get("/relative", redirect("red.png"))
        app.router.add_get("/to-canary", redirect(f"http://127.0.0.1:{self.canary.port}/"))
        app.router.add_get("/to-canary-by-name", redirect(f"http://localhost:{self.canary.port}/"))
        app.router.add_get("/to-file", redirect("file:///etc/passwd"))
        app.router.add_get("/gzipped.png", answer(lambda: web.Response(
            body=gzip.compress(RED + b"\0" * MAX * 4), headers={"Content-Encoding": "gzip"})))
        self.server = TestServer(app, host="127.0.0.1")

    async def red(self, request: web.Request) -> web.Response:
        self.agents.append(request.headers.get("User-Agent"))
        return web.Response(body=RED, content_type="text/plain")  # the type is sniffed, never taken from here

    async def missing_once_slow_is_busy(self, request: web.Request) -> web.Response:
        await self.slow.connected.wait()
        return web.Response(status=404)

    async def big_chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(RED)
        for _ in range(200):  # far past the cap: the client must stop reading on its own
            await response.write(b"\0" * 4096)
        return response

    async def hop(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(body=RED)
        raise web.HTTPFound(f"/hop/{n - 1}")  # relative: read against the URL that answered

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"


@pytest.fixture
async def slow() -> AsyncIterator[SlowServer]:
    server = SlowServer()
    await server.start()
    yield server
    server.server.close()
    await server.server.wait_closed()


@pytest.fixture
async def images(canary: Canary, slow: SlowServer) -> AsyncIterator[ImageServer]:
    server = ImageServer(canary, slow)
    await server.server.start_server()
    yield server
    await server.server.close()


def settings(images: ImageServer, slow: SlowServer, **changes: Any) -> Settings:
    """The image servers opened by their ports only: the canary, on other loopback ports, stays refused."""
    allow = [f"127.0.0.1:{images.server.port}", f"127.0.0.1:{slow.port}"]
    return Settings(**{"image_max_bytes": MAX, "image_fetch_timeout_s": 5.0, "image_allow_hosts": allow,
                       **changes})


def request_with(settings: Settings) -> tuple[Any, GatewayMetrics]:
    app = web.Application()
    app[LIVE] = LiveSettings(settings)
    app[METRICS] = metrics = GatewayMetrics()
    return SimpleNamespace(app=app), metrics


def chat(*urls: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "what is this?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": parts}]


def count(metrics: GatewayMetrics, result: str) -> float | None:
    return metrics.registry.get_sample_value("lmforge_image_inputs_total", {"result": result})


def rejections(metrics: GatewayMetrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value("lmforge_image_rejections_total", {"reason": reason})


async def refusal(settings: Settings, url: str) -> tuple[ApiError, GatewayMetrics]:
    request, metrics = request_with(settings)
    with pytest.raises(ApiError) as caught:
        await preflight(request, chat(url))
    assert caught.value.param == "messages"
    assert count(metrics, "rejected") == 1 and count(metrics, "accepted") == 0
    return caught.value, metrics


# --- refused, and never connected to ---


@pytest.mark.parametrize("host,words", [
    ("127.0.0.1", "127.0.0.1 is a loopback address"),
    ("10.0.0.1", "10.0.0.1 is a private address"),
    ("169.254.169.254", "cloud metadata"),
    ("[::ffff:127.0.0.1]", "loopback address (127.0.0.1) in IPv4-mapped form"),
    ("2130706433", "2130706433 (127.0.0.1) is a loopback address"),
    ("0x7f.1", "0x7f.1 (127.0.0.1) is a loopback address"),
    ("0177.0.0.1", "0177.0.0.1 (127.0.0.1) is a loopback address"),
    ("0x7f000001", "(127.0.0.1) is a loopback address"),
    ("127.1", "127.1 (127.0.0.1) is a loopback address"),
    ("localhost", "is a loopback address"),  # 127.0.0.1 or ::1, whichever the system lists first
])
async def test_addresses_that_are_not_public_are_refused_before_connecting(
        images: ImageServer, slow: SlowServer, canary: Canary, host: str, words: str) -> None:
    url = f"http://{host}:{canary.port}/latest/meta-data/"
    error, metrics = await refusal(settings(images, slow), url)
    assert (error.status, error.code) == (400, "image_fetch_failed")
    assert words in error.message and url in error.message and "image_allow_hosts" in error.message
    assert rejections(metrics, "blocked_address") == 1
    assert canary.seen() == []


async def test_ipv6_loopback_is_refused(images: ImageServer, slow: SlowServer, canary: Canary) -> None:
    if canary.v6 is None:
        pytest.skip("no IPv6 loopback on this machine")
    error, _ = await refusal(settings(images, slow), f"http://[::1]:{canary.v6.getsockname()[1]}/")
    assert error.code == "image_fetch_failed" and "::1 is a loopback address" in error.message


@pytest.fixture
def hosts_entry() -> Iterator[str]:
    """TEST_HOST -> 127.0.0.1 in /etc/hosts for one test; the file is given back byte for byte, whatever happens."""
    path = Path("/etc/hosts")
    # Without the line a run killed before its clean-up may have left; put back at exit whatever happens here.
    original = b"".join(line for line in path.read_bytes().splitlines(keepends=True) if TEST_HOST.encode() not in line)
    atexit.register(_restore, path, original)
    try:
        path.write_bytes(original + (b"" if original.endswith(b"\n") or not original else b"\n")
                         + f"127.0.0.1 {TEST_HOST}\n".encode())
    except OSError as exc:
        pytest.skip(f"/etc/hosts is not writable here ({exc}): a name that resolves to loopback needs it")
    try:
        if resolved(TEST_HOST) != "127.0.0.1":
            pytest.skip(f"{TEST_HOST} written in /etc/hosts does not resolve to 127.0.0.1 here")
        yield TEST_HOST
    finally:
        path.write_bytes(original)
        assert path.read_bytes() == original


def _restore(path: Path, original: bytes) -> None:
    if path.read_bytes() != original:
        path.write_bytes(original)


def resolved(host: str) -> str | None:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


async def test_a_name_that_resolves_to_loopback_is_refused(
        images: ImageServer, slow: SlowServer, canary: Canary, hosts_entry: str) -> None:
    error, metrics = await refusal(settings(images, slow), f"http://{hosts_entry}:{canary.port}/cat.png")
    assert error.code == "image_fetch_failed"
    assert f"{hosts_entry} (127.0.0.1) is a loopback address" in error.message
    assert rejections(metrics, "blocked_address") == 1


@pytest.mark.parametrize("path,words", [
    ("/to-canary", "127.0.0.1 is a loopback address"),
    ("/to-canary-by-name", "is a loopback address"),
])
async def test_a_redirect_to_a_refused_address_is_refused(
        images: ImageServer, slow: SlowServer, canary: Canary, path: str, words: str) -> None:
    error, metrics = await refusal(settings(images, slow), images.url(path))
    assert error.code == "image_fetch_failed" and words in error.message
    assert "redirected to http://" in error.message and f":{canary.port}/" in error.message
    assert rejections(metrics, "blocked_address") == 1


async def test_a_redirect_to_another_scheme_is_refused(images: ImageServer, slow: SlowServer) -> None:
    error, metrics = await refusal(settings(images, slow), images.url("/to-file"))
    assert error.code == "image_fetch_failed" and "only http and https" in error.message
    assert "redirected to file:///etc/passwd" in error.message
    assert rejections(metrics, "scheme") == 1


async def test_a_redirect_chain_longer_than_the_limit_is_refused(images: ImageServer, slow: SlowServer) -> None:
    error, metrics = await refusal(settings(images, slow, image_max_redirects=3), images.url("/hop/4"))
    assert (error.status, error.code) == (400, "image_fetch_failed")
    assert "more than 3 redirects" in error.message
    assert rejections(metrics, "too_many_redirects") == 1


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.png", "gopher://127.0.0.1:70/1",
                                 "image.png", "//127.0.0.1/x.png", "javascript:alert(1)"])
async def test_schemes_other_than_http_are_refused(images: ImageServer, slow: SlowServer, url: str) -> None:
    error, metrics = await refusal(settings(images, slow), url)
    assert (error.status, error.code) == (400, "image_fetch_failed")
    assert "only http and https images are fetched" in error.message
    assert rejections(metrics, "scheme") == 1


# --- refused by what the server sends ---


@pytest.mark.parametrize("path", ["/big.png", "/big-chunked.png"])
async def test_an_image_over_the_cap_is_413_with_or_without_a_length(
        images: ImageServer, slow: SlowServer, path: str) -> None:
    error, metrics = await refusal(settings(images, slow), images.url(path))
    assert (error.status, error.code) == (413, "image_too_large")
    assert f"{MAX}-byte limit" in error.message
    assert rejections(metrics, "too_large") == 1


async def test_a_server_that_never_finishes_is_cut_by_the_timeout(images: ImageServer, slow: SlowServer) -> None:
    error, metrics = await refusal(settings(images, slow, image_fetch_timeout_s=0.5),
                                   f"http://127.0.0.1:{slow.port}/slow.png")
    assert (error.status, error.code) == (400, "image_fetch_failed")
    assert "timed out after 0.5 s" in error.message
    assert rejections(metrics, "timeout") == 1
    await asyncio.wait_for(slow.closed.wait(), 5)  # and the connection is not left open


async def test_a_status_other_than_2xx_is_refused(images: ImageServer, slow: SlowServer) -> None:
    error, metrics = await refusal(settings(images, slow), images.url("/missing.png"))
    assert (error.status, error.code) == (400, "image_fetch_failed") and "answered 404" in error.message
    assert rejections(metrics, "http_status") == 1


async def test_bytes_that_are_not_an_image_are_refused(images: ImageServer, slow: SlowServer) -> None:
    error, metrics = await refusal(settings(images, slow), images.url("/page.html"))
    assert (error.status, error.code) == (400, "invalid_image") and "not an image" in error.message
    assert rejections(metrics, "not_an_image") == 1


async def test_one_refusal_cancels_the_other_fetches(images: ImageServer, slow: SlowServer) -> None:
    request, metrics = request_with(settings(images, slow))
    with pytest.raises(ApiError) as caught:
        await preflight(request, chat(f"http://127.0.0.1:{slow.port}/slow.png",
                                      images.url("/missing-once-slow-is-busy")))
    assert "answered 404" in caught.value.message  # long before the slow fetch's 5 s timeout
    await asyncio.wait_for(slow.closed.wait(), 5)  # its connection was closed by the cancel
    assert count(metrics, "rejected") == 1 and count(metrics, "accepted") == 0


# --- accepted ---


async def test_an_allowlisted_png_becomes_a_data_url(images: ImageServer, slow: SlowServer) -> None:
    request, metrics = request_with(settings(images, slow))
    messages = chat(images.url("/red.png"))
    messages[0]["content"][1]["image_url"]["detail"] = "low"
    assert await preflight(request, messages) is True
    part = messages[0]["content"][1]
    assert part["type"] == "image_url" and part["image_url"]["detail"] == "low"
    kind, _, payload = part["image_url"]["url"].partition(";base64,")
    assert kind == "data:image/png" and base64.b64decode(payload) == RED
    assert images.agents == [USER_AGENT] and "LMForge/" in USER_AGENT
    assert count(metrics, "accepted") == 1 and count(metrics, "rejected") == 0


async def test_messages_structs_and_responses_parts_are_rewritten(images: ImageServer, slow: SlowServer) -> None:
    request, _ = request_with(settings(images, slow))
    struct = Message(role="user", content=[{"type": "input_image", "image_url": images.url("/relative")}])
    assert await preflight(request, [struct]) is True
    assert struct.content == [{"type": "image_url", "image_url": {"url": data_url(RED)}}]


async def test_a_redirect_chain_within_the_limit_is_followed(images: ImageServer, slow: SlowServer) -> None:
    request, _ = request_with(settings(images, slow, image_max_redirects=3))
    messages = chat(images.url("/hop/3"))
    assert await preflight(request, messages) is True
    assert messages[0]["content"][1]["image_url"]["url"] == data_url(RED)


async def test_a_network_entry_opens_the_servers_in_it(images: ImageServer, slow: SlowServer) -> None:
    request, _ = request_with(settings(images, slow, image_allow_hosts=["127.0.0.0/8"]))
    messages = chat(images.url("/red.png"))
    assert await preflight(request, messages) is True
    assert messages[0]["content"][1]["image_url"]["url"] == data_url(RED)


async def test_several_images_are_fetched_and_counted_once_each(images: ImageServer, slow: SlowServer) -> None:
    request, metrics = request_with(settings(images, slow))
    messages = chat(*(images.url("/red.png") for _ in range(6)), data_url(RED))
    assert await preflight(request, messages) is True
    assert all(p["image_url"]["url"] == data_url(RED) for p in messages[0]["content"][1:])
    assert count(metrics, "accepted") == 6 and count(metrics, "inline") == 1
    assert len(images.agents) == 1  # one URL, fetched once for its six parts


async def test_more_distinct_remote_images_than_the_cap_are_refused_before_any_fetch(
        images: ImageServer, slow: SlowServer) -> None:
    request, _ = request_with(settings(images, slow))
    urls = [images.url(f"/red.png?n={n}") for n in range(MAX_REMOTE + 1)]
    with pytest.raises(ApiError) as caught:
        await preflight(request, chat(*urls))
    assert caught.value.status == 400 and f"at most {MAX_REMOTE} remote images" in caught.value.message
    assert images.agents == []


@pytest.mark.parametrize("host", ["127.0.0.256", "1.2.3.4.5", "127.0.0.1.", "0x7f.0.0.0.1"])
async def test_a_host_spelt_as_an_address_that_is_none_is_refused(
        images: ImageServer, slow: SlowServer, canary: Canary, host: str) -> None:
    """Some aiohttp releases connect to such a host without asking the resolver."""
    error, metrics = await refusal(settings(images, slow), f"http://{host}:{canary.port}/")
    assert error.code == "image_fetch_failed" and "is not a valid address" in error.message
    assert rejections(metrics, "blocked_address") == 1


async def test_a_compressed_body_is_refused_not_inflated(images: ImageServer, slow: SlowServer) -> None:
    error, metrics = await refusal(settings(images, slow), images.url("/gzipped.png"))
    assert error.code == "image_fetch_failed" and "gzip-encoded" in error.message


# --- data: URLs ---


async def test_a_data_url_passes_as_it_is() -> None:
    request, metrics = request_with(Settings(image_max_bytes=MAX))
    messages = chat(data_url(RED))
    assert await preflight(request, messages) is False
    assert messages == chat(data_url(RED))
    assert count(metrics, "inline") == 1


async def test_a_data_url_with_a_wrong_type_is_rewritten_with_the_sniffed_one() -> None:
    request, metrics = request_with(Settings(image_max_bytes=MAX))
    messages = chat(data_url(RED, "image/jpeg"))
    assert await preflight(request, messages) is True
    assert messages[0]["content"][1]["image_url"]["url"] == data_url(RED, "image/png")
    assert count(metrics, "inline") == 1


async def test_a_data_url_over_the_cap_is_413() -> None:
    error, metrics = await refusal(Settings(image_max_bytes=MAX), data_url(RED + b"\0" * MAX))
    assert (error.status, error.code) == (413, "image_too_large")
    assert len(error.message) < 400  # the URL is cut short in the message
    assert rejections(metrics, "too_large") == 1


@pytest.mark.parametrize("url", [data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/png"),
                                 "data:image/png;base64,not*base64!", "data:image/png,%89PNG",
                                 "data:image/png;base64"])
async def test_a_data_url_that_is_not_a_base64_image_is_400(url: str) -> None:
    error, metrics = await refusal(Settings(image_max_bytes=MAX), url)
    assert (error.status, error.code) == (400, "invalid_image")
    assert rejections(metrics, "not_an_image") == 1


async def test_an_image_part_without_a_url_is_400() -> None:
    request, metrics = request_with(Settings())
    with pytest.raises(ApiError) as caught:
        await preflight(request, [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    assert (caught.value.status, caught.value.code) == (400, "invalid_image") and "no URL" in caught.value.message
    assert rejections(metrics, "not_an_image") == 1


async def test_requests_without_images_touch_nothing() -> None:
    request = SimpleNamespace(app={})  # no settings, no metrics: reading either would fail
    assert await preflight(request, chat()) is False  # type: ignore[arg-type]
    assert await preflight(request, [Message(role="user", content="hi")]) is False  # type: ignore[arg-type]
