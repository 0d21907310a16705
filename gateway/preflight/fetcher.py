"""The SSRF-safe image fetcher: a resolver that checks every address it returns, so each connection goes to an
address that was checked; redirects followed by hand, each hop checked again; bytes and time capped."""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass
from ipaddress import ip_address

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from gateway.preflight.addresses import Address, Allowlist, allowlist, literal, refusal
from gateway.version import VERSION
from manager.config import Settings

REDIRECTS = frozenset({301, 302, 303, 307, 308})
NUMERIC_LABEL = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]*")
CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout_s: float  # the whole fetch, redirects included
    max_redirects: int
    allow: Allowlist


def fetch_policy(settings: Settings) -> FetchPolicy:
    """The image settings in force (built once per change, by LiveSettings.view)."""
    return FetchPolicy(settings.image_max_bytes, settings.image_fetch_timeout_s, settings.image_max_redirects,
                       allowlist(settings))


class Refused(Exception):
    """An image that cannot be used: the HTTP status and error code to answer with, the metric's reason, and
    why in words; `redirected_to` is the hop that failed when a redirect led there."""

    def __init__(self, status: int, code: str, reason: str, why: str) -> None:
        super().__init__(why)
        self.status, self.code, self.reason, self.why = status, code, reason, why
        self.redirected_to: str | None = None


def failed(reason: str, why: str) -> Refused:
    return Refused(400, "image_fetch_failed", reason, why)


def too_large(max_bytes: int, size: int | None = None) -> Refused:
    what = f"{size} bytes, over" if size is not None else "over"
    return Refused(413, "image_too_large", "too_large", f"the image is {what} the {max_bytes}-byte limit "
                   "(image_max_bytes)")


def check_address(host: str, address: Address, allow: Allowlist) -> None:
    """Raise Refused when `address` (what `host` names or resolves to) must not be connected to."""
    if allow.opens_address(address) or not (why := refusal(address)):
        return
    where = str(address) if host == str(address) else f"{host} ({address})"
    raise failed("blocked_address", f"refused: {where} is {why}; images are fetched from public addresses only "
                 "(image_allow_hosts in config.toml lets a host through)")


def target(url: URL, allow: Allowlist) -> URL:
    """`url` if it may be requested (its scheme, and its host when that is an address), with such a host
    written canonically: aiohttp refuses `2130706433` and would hand `0x7f.1` to the resolver as a name."""
    if url.scheme not in ("http", "https"):
        raise failed("scheme", "refused: only http and https images are fetched; send any other image inline "
                     "as a data: URL")
    if not url.host:
        raise failed("fetch_failed", "refused: the URL has no host")
    address = literal(url.host)
    if address is None and _address_like(url.host):
        # Not an address, yet spelt as one: some aiohttp releases connect to such a host without asking the
        # resolver, and the system's lookup may answer it from anywhere.
        raise failed("blocked_address", f"refused: {url.host} is not a valid address")
    if address is None:
        return url  # a name: PinnedResolver checks what it resolves to, at connection time
    if not allow.opens_host(url.host, url.port):
        check_address(url.host, address, allow)
    return url if str(address) == url.host else url.with_host(str(address))


def _address_like(host: str) -> bool:
    """Whether `host` is spelt as an address (numbers and dots, or colons) rather than as a name."""
    return ":" in host or all(NUMERIC_LABEL.fullmatch(label) for label in host.split("."))


class PinnedResolver(AbstractResolver):
    """Resolves a host and returns its addresses only when every one of them may be connected to, so that the
    connection is made to a checked address with no second lookup (no DNS rebinding between check and use)."""

    def __init__(self, allow: Allowlist) -> None:
        self.allow = allow

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        address = literal(host)
        found = [address] if address is not None else await self._lookup(host, port, family)
        if not self.allow.opens_host(host, port):
            for each in found:
                check_address(host, each, self.allow)
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [ResolveResult(hostname=host, host=str(each), port=port, proto=0, flags=flags,
                              family=socket.AF_INET6 if each.version == 6 else socket.AF_INET) for each in found]

    async def _lookup(self, host: str, port: int, family: socket.AddressFamily) -> list[Address]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=family,
                                                                 type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise failed("fetch_failed", f"the host {host} could not be resolved ({exc.strerror})") from None
        return list(dict.fromkeys(ip_address(info[4][0]) for info in infos))

    async def close(self) -> None:
        pass


USER_AGENT = f"Mozilla/5.0 (compatible; LMForge/{VERSION}; +https://github.com/lmforge/lmforge)"


def open_session(policy: FetchPolicy) -> aiohttp.ClientSession:
    """A session of its own for one preflight: a fresh connector on a PinnedResolver, no proxy from the
    environment, no cookies carried between hops."""
    connector = aiohttp.TCPConnector(resolver=PinnedResolver(policy.allow), use_dns_cache=False)
    return aiohttp.ClientSession(
        connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=policy.timeout_s),
        headers={"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"})


async def fetch(session: aiohttp.ClientSession, url: str, policy: FetchPolicy) -> bytearray:
    """The image at `url`, redirects followed; raises Refused for anything that stops it."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _follow(session, URL(url), policy)
    except TimeoutError:
        raise failed("timeout", f"the fetch timed out after {policy.timeout_s:g} s (image_fetch_timeout_s)") from None
    except aiohttp.ClientError as exc:
        raise failed("fetch_failed", f"the fetch failed: {exc}") from None
    except ValueError as exc:  # yarl's verdict on a URL or a Location it cannot parse
        raise failed("fetch_failed", f"not a valid URL: {exc}") from None


async def _follow(session: aiohttp.ClientSession, url: URL, policy: FetchPolicy) -> bytearray:
    for hop in range(policy.max_redirects + 1):
        try:
            url = target(url, policy.allow)
            async with session.get(url, allow_redirects=False) as response:
                if response.status in REDIRECTS:
                    url = _location(url, response)
                    continue
                if not 200 <= response.status < 300:
                    raise failed("http_status", f"the server answered {response.status} {response.reason or ''}"
                                 .rstrip())
                return await _read(response, policy.max_bytes)
        except Refused as refused:
            if hop:
                refused.redirected_to = str(url)
            raise
    raise failed("too_many_redirects", f"more than {policy.max_redirects} redirects (image_max_redirects)")


def _location(url: URL, response: aiohttp.ClientResponse) -> URL:
    location = response.headers.get("Location")
    if not location:
        raise failed("fetch_failed", f"the server answered {response.status} without a Location")
    return url.join(URL(location))  # a relative Location is read against the URL that answered


async def _read(response: aiohttp.ClientResponse, max_bytes: int) -> bytearray:
    """The body, refused before it is read when its Content-Length is over the cap, and the moment it passes
    the cap otherwise (a chunked body, or a server that sends more than it announced)."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # asked for identity: a compressed body would be inflated past the cap
        raise failed("fetch_failed", f"the server sent a {encoding}-encoded body; images are fetched uncompressed")
    if response.content_length is not None and response.content_length > max_bytes:
        raise too_large(max_bytes, response.content_length)
    body = bytearray()  # not copied to bytes: an image may be megabytes, and base64 and the sniffer take this
    async for chunk in response.content.iter_chunked(CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise too_large(max_bytes)
    return body
