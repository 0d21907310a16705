"""How large a request body may be (max_body_mb, LMFORGE_MAX_BODY_MB), and that it is never compressed.

A declared Content-Length over the limit is refused before a byte is read; a
chunked body is cut off as it crosses the limit by aiohttp's `request.read()`
(client_max_size, set from the same setting in gateway/app.py), which every
handler reads JSON bodies through. Compressed bodies are refused whole, never
inflated (the server runs with auto_decompress=False): a few KB of gzip can
inflate to gigabytes. The one exception is a blob upload, a model file
streamed to disk as it arrives and never held in memory.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from gateway.errors import ApiError
from gateway.keys import SETTINGS

MiB = 1024**2
IDENTITY = ("", "identity")


def streams_to_disk(request: web.Request) -> bool:
    """Ollama's blob upload: a GGUF of any size, hashed and written to disk as it streams in."""
    return request.method == "POST" and request.path.startswith("/api/blobs/")


@web.middleware
async def body_limit_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if encoding not in IDENTITY:
        raise ApiError(415, f"compressed request bodies are not accepted (Content-Encoding: {encoding[:40]}); "
                            "send the body uncompressed", code="unsupported_content_encoding")
    if streams_to_disk(request):
        return await handler(request)
    limit_mb = request.app[SETTINGS].max_body_mb
    declared = request.content_length
    if declared is not None and declared > limit_mb * MiB:
        raise _too_large(limit_mb)
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:  # a chunked body crossed the limit as it was read
        raise _too_large(limit_mb) from None


def _too_large(limit_mb: int) -> ApiError:
    return ApiError(413, f"the request body is larger than the {limit_mb} MiB limit (max_body_mb in config, "
                         "or LMFORGE_MAX_BODY_MB)", code="request_too_large")


def setup_body_limit(app: web.Application) -> None:
    app.middlewares.append(body_limit_middleware)
