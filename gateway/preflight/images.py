"""The image preflight: every image part of a chat request checked before any engine work, data: URLs passed
(their base64 and type checked), remote images fetched by gateway/preflight/fetcher.py and rewritten in place as
data: URLs, anything else refused; llama-server would fetch any URL it is given itself."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any, Sequence

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.dataplane.gates import image_parts
from gateway.dataplane.model import Message
from gateway.errors import ApiError
from gateway.keys import LIVE, METRICS
from gateway.metrics_registry import GatewayMetrics
from gateway.preflight.fetcher import FetchPolicy, Refused, failed, fetch, fetch_policy, open_session, target, too_large
from gateway.preflight.formats import image_type

FETCHES = 4  # remote images of one request fetched at once
# Remote images one request may name (each distinct URL is fetched once): each may be image_max_bytes, and
# all of them are held at once, so a body of thousands of URLs must not make the gateway fetch them all.
MAX_REMOTE = 8
SHOWN = 200  # characters of a URL an error message repeats (a data: URL is megabytes)


async def preflight(request: web.Request, messages: Sequence[Message | dict[str, Any]],
                    param: str = "messages") -> bool:
    """Check every image part of `messages` and rewrite remote ones as data: URLs, in place; whether any changed.
    Raises ApiError (400 image_fetch_failed or invalid_image, 413 image_too_large) for the first image refused,
    naming `param`, the field of the request the images came in."""
    parts = list(image_parts(messages))
    if not parts:
        return False
    try:
        return await check_images(parts, request.app[LIVE].view(fetch_policy), request.app[METRICS])
    except ApiError as err:
        err.param = param
        raise


async def check_images(parts: list[dict[str, Any]], policy: FetchPolicy, metrics: GatewayMetrics) -> bool:
    """The preflight of these image parts under `policy`: inline ones and schemes first, so that nothing is
    fetched for a request that is refused anyway; then the remote ones, fetched together."""
    changed = False
    remote: list[tuple[dict[str, Any], str]] = []
    for part in parts:
        url = _url(part)
        try:
            if not url:
                raise Refused(400, "invalid_image", "not_an_image", 'it has no URL: send {"type": "image_url", '
                              '"image_url": {"url": "https://..." or "data:image/png;base64,..."}}')
            if url[:5].lower() == "data:":
                changed |= _inline(part, url, policy.max_bytes)
                metrics.images.labels("inline").inc()
            else:
                _parse(url, policy)
                remote.append((part, url))
        except Refused as refused:
            raise _rejected(refused, url, metrics) from None
    if len({url for _, url in remote}) > MAX_REMOTE:
        metrics.images.labels("rejected").inc()
        metrics.image_rejections.labels("fetch_failed").inc()
        raise ApiError(400, f"a request may name at most {MAX_REMOTE} remote images; send the others inline as "
                       "data: URLs", code="image_fetch_failed")
    if remote:
        await _fetch_all(remote, policy, metrics)
    return changed or bool(remote)


def _url(part: dict[str, Any]) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    return url if isinstance(url, str) else ""


def _parse(url: str, policy: FetchPolicy) -> None:
    """Refuse a scheme other than http(s), or a host that is a refused address, before any session is made."""
    try:
        target(URL(url), policy.allow)
    except ValueError as exc:
        raise failed("fetch_failed", f"not a valid URL: {exc}") from None


def _inline(part: dict[str, Any], url: str, max_bytes: int) -> bool:
    """Check a data: URL (base64, size, type sniffed from its bytes); rewrite it when it declares another type."""
    header, comma, payload = url[5:].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    if not comma or "base64" not in params[1:]:
        raise Refused(400, "invalid_image", "not_an_image", "a data: URL must carry base64 data "
                      "(data:image/png;base64,...)")
    padded = payload + "=" * (-len(payload) % 4)
    size = len(padded) // 4 * 3 - padded[-2:].count("=")
    if size > max_bytes:
        raise too_large(max_bytes, size)
    try:
        data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, "invalid_image", "not_an_image", "the data: URL's base64 is invalid") from None
    kind = _sniffed(data)
    if params[0] == kind:
        return False
    _rewrite(part, f"data:{kind};base64,{padded}")
    return True


def _sniffed(data: bytes | bytearray) -> str:
    if (kind := image_type(data)) is None:
        raise Refused(400, "invalid_image", "not_an_image",
                      "not an image the engine can read (PNG, JPEG, GIF or BMP)")
    return kind


async def _fetch_all(remote: list[tuple[dict[str, Any], str]], policy: FetchPolicy, metrics: GatewayMetrics,
                     ) -> None:
    """Fetch every remote image, FETCHES at a time, in one session; the first refusal cancels the others (the
    task group's rule) and closes the session before it is raised."""
    gate = asyncio.Semaphore(FETCHES)
    by_url: dict[str, list[dict[str, Any]]] = {}
    for part, url in remote:
        by_url.setdefault(url, []).append(part)  # one fetch per URL, however many parts name it
    async with open_session(policy) as session:
        try:
            async with asyncio.TaskGroup() as group:
                for url, parts in by_url.items():
                    group.create_task(_fetch_one(session, gate, parts, url, policy, metrics))
        except BaseExceptionGroup as failures:
            refusals = [e for e in failures.exceptions if isinstance(e, ApiError)]
            if len(refusals) < len(failures.exceptions):
                raise  # a bug, not a refusal: let it be seen whole
            raise refusals[0] from None


async def _fetch_one(session: aiohttp.ClientSession, gate: asyncio.Semaphore, parts: list[dict[str, Any]],
                     url: str, policy: FetchPolicy, metrics: GatewayMetrics) -> None:
    async with gate:
        try:
            data = await fetch(session, url, policy)
            kind = _sniffed(data)
        except Refused as refused:
            raise _rejected(refused, url, metrics) from None
    inline = f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"
    for part in parts:
        _rewrite(part, inline)
        metrics.images.labels("accepted").inc()


def _rewrite(part: dict[str, Any], url: str) -> None:
    """`part` as an OpenAI image_url part holding `url`, its `detail` kept."""
    value = part.get("image_url")
    detail = value.get("detail") if isinstance(value, dict) else part.get("detail")
    part.clear()
    part["type"] = "image_url"
    part["image_url"] = {"url": url} if detail is None else {"url": url, "detail": detail}


def _rejected(refused: Refused, url: str, metrics: GatewayMetrics) -> ApiError:
    metrics.images.labels("rejected").inc()
    metrics.image_rejections.labels(refused.reason).inc()
    # An inline image is not quoted: it is megabytes, and a dialect's codec may have written its data: prefix.
    subject = "an inline image" if url[:5].lower() == "data:" else f"image {_shown(url)}" if url else "an image part"
    via = f" (redirected to {_shown(refused.redirected_to)})" if refused.redirected_to else ""
    return ApiError(refused.status, f"{subject}{via}: {refused.why}", code=refused.code, param="messages")


def _shown(url: str) -> str:
    return url if len(url) <= SHOWN else url[:SHOWN] + "..."
