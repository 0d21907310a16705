"""Ollama's model-index routes: blobs, create, copy, delete, as `ollama create` and its clients use them.

Blobs are content-addressed files under `<home>/blobs`, written here as they stream in
and kept only when their sha256 matches the digest in the URL. Every index change
(create, copy, delete) is the manager's to make: these handlers ask it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from catalog.capabilities import is_projector
from catalog.gguf_info import GGUFError, GGUFInfo, read_gguf_info
from gateway.api.ollama.codec import NDJSON
from gateway.dataplane.gates import installed_name, valid_name
from gateway.dataplane.validate import decode_as
from gateway.errors import ApiError, from_manager
from gateway.keys import MANAGER, PATHS
from gateway.middleware.auth import require_local
from manager.client import ManagerError, ManagerUnavailable
from manager.protocol import IMPORT_TIMEOUT_S, CopyModelRequest, DeleteModelRequest, ErrorCode, ImportModelRequest

log = logging.getLogger("lmforge.gateway")

DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
CHUNK = 1 << 20
# Keys of Ollama's create request that LMForge reads; any other is accepted, logged and ignored.
CREATE_KEYS = {"model", "name", "stream", "files", "from", "modelfile", "adapters"}
IGNORED_COMMANDS = {"TEMPLATE", "SYSTEM", "PARAMETER", "LICENSE", "MESSAGE"}


class CreateBody(msgspec.Struct):
    model: str = ""
    name: str = ""  # the older spelling of `model`
    stream: bool = True
    files: dict[str, str] | None = None  # file name -> blob digest
    from_: str = msgspec.field(default="", name="from")  # an installed model to copy
    modelfile: str = ""  # the older API: "FROM <path, @digest or model>"
    adapters: dict[str, str] | None = None


class CopyBody(msgspec.Struct):
    source: str
    destination: str


class DeleteBody(msgspec.Struct):
    model: str = ""
    name: str = ""


# --- blobs ---


def blob_path(request: web.Request, digest: str) -> Path:
    match = DIGEST.match(digest)
    if match is None:
        raise ApiError(400, f"invalid digest {digest!r}: expected sha256:<64 lowercase hex digits>", param="digest")
    return request.app[PATHS].blobs / f"sha256-{match.group(1)}"


async def head_blob(request: web.Request) -> web.Response:
    found = await asyncio.to_thread(blob_path(request, request.match_info["digest"]).is_file)
    return web.Response(status=200 if found else 404)


async def create_blob(request: web.Request) -> web.Response:
    """Stream the body to a part file, hashing as it goes; only a matching digest becomes the blob."""
    digest = request.match_info["digest"]
    path = blob_path(request, digest)
    if await asyncio.to_thread(path.is_file):
        return web.Response(status=200)
    part = path.with_name(f"{path.name}-{uuid.uuid4().hex[:8]}.part")  # two uploads of one blob never mix
    await asyncio.to_thread(part.parent.mkdir, parents=True, exist_ok=True)
    sha = hashlib.sha256()
    try:
        with open(part, "wb") as f:
            def sink(chunk: bytes) -> None:
                sha.update(chunk)
                f.write(chunk)
            async for chunk in request.content.iter_chunked(CHUNK):
                await asyncio.to_thread(sink, chunk)
        got = f"sha256:{sha.hexdigest()}"
        if got != digest:
            raise ApiError(400, f'digest mismatch, expected "{digest}", got "{got}"', param="digest")
        await asyncio.to_thread(os.replace, part, path)
    finally:
        part.unlink(missing_ok=True)  # a mismatch or a dropped upload leaves nothing behind
    return web.Response(status=201)


# --- create ---


async def create(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = decode_as(raw, CreateBody)
    if ignored := sorted(set(msgspec.json.decode(raw, type=dict[str, msgspec.Raw])) - CREATE_KEYS):
        log.info("create %s: ignoring %s (LMForge serves the GGUF as it is)", body.model or body.name,
                 ", ".join(ignored))
    name = _valid_name(body.model or body.name, "model")
    if body.adapters:
        raise ApiError(400, "LoRA adapters are not supported", param="adapters")
    source, files, local = body.from_, body.files, None
    if not source and files is None and body.modelfile:
        source, files, local = _from_modelfile(request, body.modelfile)
    if source:
        source = installed_name(request, source, "from")
        return await _progress(request, body.stream, ["copying model"], CopyModelRequest,
                               source=source, destination=name)
    if local is not None:
        return await _progress(request, body.stream, ["parsing GGUF"], ImportModelRequest, path=str(local), name=name)
    if files is None:
        raise ApiError(400, "neither 'from' nor 'files' was given: name the GGUF blobs to create the model from")
    model, mmproj = await _model_and_projector(request, files)
    steps = ["parsing GGUF", *(f"using existing layer {digest}" for digest in files.values())]
    # The blob was hashed as it was uploaded, and is named by that hash: the manager need not read it again.
    return await _progress(request, body.stream, steps, ImportModelRequest, path=str(model), name=name,
                           mmproj=str(mmproj or ""), sha256=model.name.removeprefix("sha256-"))


def _valid_name(name: str, field: str) -> str:
    if not name:
        raise ApiError(400, f"{field} is required", param=field)
    return valid_name(name, field)


def _from_modelfile(request: web.Request, modelfile: str) -> tuple[str, dict[str, str] | None, Path | None]:
    """The older create API: (model to copy, blobs, or a file here) from its one FROM line."""
    commands = [line.strip().split(None, 1) for line in modelfile.splitlines() if line.strip()]
    found = [args[1].strip().strip('"') for args in commands if args[0].upper() == "FROM" and len(args) == 2]
    if len(found) != 1:
        raise ApiError(400, "the modelfile must have exactly one FROM line", param="modelfile")
    ignored = sorted({args[0].upper() for args in commands} & IGNORED_COMMANDS)
    if ignored:
        log.info("create: ignoring modelfile %s (LMForge serves the GGUF as it is)", ", ".join(ignored))
    target = found[0]
    if DIGEST.match(target.removeprefix("@")):  # older clients upload the file and write FROM @sha256:...
        return "", {"model.gguf": target.removeprefix("@")}, None
    if target.startswith(("/", ".", "~")):
        require_local(request, "a modelfile FROM a file path")
        if not target.startswith("/"):
            raise ApiError(400, f"FROM {target}: a file path must be absolute on the LMForge machine "
                                "(or upload the file as a blob)", param="modelfile")
        return "", None, Path(target)
    return target, None, None


async def _model_and_projector(request: web.Request, files: dict[str, str]) -> tuple[Path, Path | None]:
    """Which file is the model and which (if any) its vision projector, from their GGUF headers."""
    if not files:
        raise ApiError(400, "no files provided: upload the GGUF as a blob and name it in files", param="files")
    headers: list[tuple[Path, GGUFInfo]] = []
    for file_name, ref in files.items():
        if file_name.startswith("/") or ".." in Path(file_name).parts:
            raise ApiError(400, f"file path {file_name!r} must be relative", param="files")
        path = blob_path(request, ref)
        try:
            headers.append((path, await asyncio.to_thread(read_gguf_info, path)))
        except GGUFError as exc:
            missing = not await asyncio.to_thread(path.exists)
            raise ApiError(400, f"blob {ref} for {file_name} was not uploaded (POST /api/blobs/{ref} first)"
                           if missing else f"{file_name}: {exc}", param="files") from None
    models = [path for path, info in headers if not is_projector(info)]
    projectors = [path for path, info in headers if is_projector(info)]
    if len(models) != 1 or len(projectors) > 1:
        raise ApiError(400, f"files must hold one model GGUF and at most one projector (clip) GGUF; got "
                            f"{len(models)} model(s) and {len(projectors)} projector(s) (split GGUFs are not "
                            "supported)", param="files")
    return models[0], projectors[0] if projectors else None


async def _progress(request: web.Request, stream: bool, steps: list[str], cls: type,
                    **fields: Any) -> web.StreamResponse:
    """Ollama's create reply: NDJSON status lines ending in success, or one success object."""
    change = request.app[MANAGER].request(cls, timeout=IMPORT_TIMEOUT_S, **fields)
    if not stream:
        await _ollama_errors(change, fields)
        return web.json_response({"status": "success"})
    resp = web.StreamResponse(headers={"Content-Type": NDJSON})
    await resp.prepare(request)
    for step in [*steps, "writing manifest"]:
        await resp.write(json.dumps({"status": step}).encode() + b"\n")
    try:
        await _ollama_errors(change, fields)
    except ApiError as exc:  # the status line is sent already: Ollama reports it in the stream
        await resp.write(json.dumps({"error": exc.message}).encode() + b"\n")
    else:
        await resp.write(b'{"status":"success"}\n')
    await resp.write_eof()
    return resp


async def _ollama_errors(change: Any, fields: dict[str, Any]) -> Any:
    """The manager's answer; a refusal becomes an ApiError, worded as Ollama words it."""
    try:
        return await change
    except ManagerError as exc:
        if exc.code == ErrorCode.MODEL_NOT_FOUND:
            raise ApiError(404, f"model '{fields.get('source') or fields.get('model')}' not found") from None
        raise from_manager(exc) from None
    except ManagerUnavailable as exc:
        raise from_manager(exc) from None


# --- copy, delete ---


async def copy(request: web.Request) -> web.Response:
    body = decode_as(await request.read(), CopyBody)
    source = installed_name(request, _valid_name(body.source, "source"), "source")
    _valid_name(body.destination, "destination")
    await _ollama_errors(request.app[MANAGER].request(CopyModelRequest, source=source,
                                                      destination=body.destination), {"source": body.source})
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    body = decode_as(await request.read(), DeleteBody)
    name = installed_name(request, _valid_name(body.model or body.name, "model"))
    await _ollama_errors(request.app[MANAGER].request(DeleteModelRequest, model=name), {"model": name})
    return web.Response(status=200)
