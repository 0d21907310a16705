"""Ollama's /api/pull: a pull followed as Ollama's NDJSON progress (`status`, `digest`, `total`, `completed`).

Ollama's steps are kept, so its clients draw their bars: "pulling manifest", a line
per file as its bytes come in, "verifying sha256 digest", "writing manifest", "success".
"""

from __future__ import annotations

import hashlib
import logging

import msgspec
from aiohttp import web

from gateway.api.native.pulls import PullFollower, Update
from gateway.api.ollama.codec import NDJSON
from gateway.dataplane.gates import valid_name
from gateway.dataplane.validate import decode_as
from gateway.errors import ApiError, from_manager
from manager.client import ManagerError
from manager.protocol import ErrorCode, PullFileProgress, PullInfo, PullState

log = logging.getLogger("lmforge.gateway")

_encode = msgspec.json.encode
# Ollama's own words for a model its registry does not have; its clients show them as they are.
NOT_FOUND = "pull model manifest: file does not exist"
CANCELLED = "the pull was cancelled; run the same pull to resume"
FINISHED = ("done", "present")


class PullBody(msgspec.Struct):
    model: str = ""
    name: str = ""  # the older spelling of `model`
    stream: bool = True
    insecure: bool = False  # Ollama's registry over plain HTTP: LMForge pulls from the Hub over HTTPS, always


def file_digest(pull: PullInfo, file: PullFileProgress) -> str:
    """The file's sha256 in hex when the pull reports it; otherwise a stable stand-in, so that a client can
    still tell the files apart (Ollama's clients key their bars by digest)."""
    return file.sha256 or hashlib.sha256(f"{pull.repo}/{file.path}".encode()).hexdigest()


class PullLines:
    """The NDJSON objects of one pull, from its updates in order: each line once, a file's again only when its
    progress changed."""

    def __init__(self) -> None:
        self._manifest = False
        self._verified = False
        self._files: dict[str, tuple[int, int]] = {}

    def lines(self, pull: PullInfo) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        if not self._manifest:
            out.append({"status": "pulling manifest"})
            self._manifest = True
        verified = pull.state in (PullState.INDEXING, PullState.DONE)  # every file is in place by then
        for file in pull.files:
            completed = file.size if verified or file.state in FINISHED else file.done
            if self._files.get(file.path) != (file.size, completed):
                self._files[file.path] = (file.size, completed)
                hex_digest = file_digest(pull, file)
                out.append({"status": f"pulling {hex_digest[:12]}", "digest": f"sha256:{hex_digest}",
                            "total": file.size, "completed": completed})
        if verified and not self._verified:
            out += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}]
            self._verified = True
        if pull.state == PullState.DONE:
            out.append({"status": "success"})
        elif pull.state == PullState.FAILED:
            out.append({"error": pull.error or "the pull failed"})
        elif pull.state == PullState.CANCELLED:
            out.append({"error": CANCELLED})
        return out


def encode_lines(lines: list[dict[str, object]]) -> bytes:
    return b"".join(_encode(line) + b"\n" for line in lines)


async def pull(request: web.Request) -> web.StreamResponse:
    body = decode_as(await request.read(), PullBody)
    name = body.model or body.name
    if not name:
        raise ApiError(400, "model is required", param="model")
    valid_name(name)
    follower = PullFollower(request, name, follow=True)
    try:
        first = await follower.start()
    except ManagerError as exc:
        if exc.code == ErrorCode.MODEL_NOT_FOUND:
            raise ApiError(404, f"{NOT_FOUND} ({exc.message})", param="model") from None
        raise from_manager(exc) from None
    try:
        if body.stream:
            return await _stream(request, follower, first)
        return await _wait(follower, first)
    finally:
        follower.close()


async def _stream(request: web.Request, follower: PullFollower, first: Update) -> web.StreamResponse:
    lines = PullLines()
    resp = web.StreamResponse(headers={"Content-Type": NDJSON})
    await resp.prepare(request)
    sent = lines.lines(first.pull)
    await resp.write(encode_lines(sent))
    async for update in follower.updates():
        if update is None:  # NDJSON has no comment line: the last status again keeps the connection honest
            await resp.write(encode_lines(sent[-1:]))
            continue
        if new := lines.lines(update.pull):
            sent = new
            await resp.write(encode_lines(new))
    await resp.write_eof()
    return resp


async def _wait(follower: PullFollower, first: Update) -> web.Response:
    """`stream: false`: one object at the end, `{"status": "success"}` or the error with its status."""
    last = first
    async for update in follower.updates():
        if update is not None:
            last = update
        if follower.client_gone():  # nothing is written meanwhile, so only the transport tells
            return web.Response(status=499)
    if last.pull.state == PullState.DONE:
        return web.json_response({"status": "success"})
    # A failed pull answers with the status its cause fits (an unknown repo 404, no disk 507, the Hub 502: Ollama
    # says 500 for all); a cancelled one is the caller's conflict.
    if last.pull.state == PullState.CANCELLED:
        raise ApiError(409, CANCELLED)
    raise ApiError(last.pull.error_status or 500, last.pull.error or "the pull failed")
