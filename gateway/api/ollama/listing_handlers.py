"""GET /api/tags, POST /api/show, GET /api/ps, GET /api/version, and Ollama's `GET /` liveness text."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from catalog.gguf_info import CHAT_TEMPLATE_KEY, GGUFInfo
from gateway.api.ollama import codec
from gateway.api.ollama.details import capabilities, details, digest, header, tagged
from gateway.api.ollama.times import FOREVER_S, rfc3339
from gateway.dataplane.respond import json_reply
from gateway.keys import MANAGER, SETTINGS, STORE
from manager.context import start_ctx
from manager.protocol import ModelEntry, SlotInfo, SlotKind, SlotState, SnapshotReply, SnapshotRequest

# The Ollama release whose API this dialect follows; clients that check the server's
# version (for `think`, structured `format`, tool streaming) accept it.
OLLAMA_VERSION = "0.12.6"
LOADED = (SlotState.LOADING, SlotState.READY)


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    return json_reply({"version": OLLAMA_VERSION})


async def tags(request: web.Request) -> web.Response:
    return json_reply({"models": [listed(entry) for entry in request.app[STORE].list()]})


def listed(entry: ModelEntry) -> dict[str, Any]:
    name = tagged(entry.name)
    return {"name": name, "model": name, "modified_at": rfc3339(entry.added_at), "size": entry.size_bytes,
            "digest": digest(entry), "details": details(entry)}


async def show(request: web.Request) -> web.Response:
    _, entry = await codec.read_request(request, legacy=True)
    info = await header(entry)
    template = info.chat_template if info else ""
    return json_reply({
        "license": "",
        "modelfile": f"# Modelfile of {tagged(entry.name)}, as LMForge serves it\nFROM {entry.path}\n",
        "parameters": parameters(request, entry),
        "template": template if isinstance(template, str) else "",
        "details": details(entry),
        "model_info": model_info(info) if info else {},
        "capabilities": capabilities(entry, info),
        "modified_at": rfc3339(entry.added_at),
    })


def parameters(request: web.Request, entry: ModelEntry) -> str:
    """Ollama's Modelfile-style parameter lines: the context a fresh engine for this model gets."""
    if SlotKind.CHAT not in entry.kinds:
        return ""
    ctx = start_ctx(request.app[SETTINGS].llama_cpp.ctx_size, 0, entry.context_length)
    lines = [("num_ctx", ctx), *sorted(entry.options.items())]  # the catalog's defaults, as the engine applies them
    return "\n".join(f"{key:<30} {value}" for key, value in lines)


def model_info(info: GGUFInfo) -> dict[str, Any]:
    """The header's keys; the vocabulary's arrays are null, as Ollama shows them (unless verbose)."""
    out: dict[str, Any] = {"general.parameter_count": info.parameters}
    for key in sorted({*info.metadata, *info.array_lengths}):
        if key == CHAT_TEMPLATE_KEY:  # shown as `template`
            continue
        vocabulary = key.startswith("tokenizer.ggml.") and key in info.array_lengths
        out[key] = None if vocabulary else info.metadata.get(key)
    return out


async def ps(request: web.Request) -> web.Response:
    """Loaded models, each once (its chat engine, when it has one beside an embedding one)."""
    snap: SnapshotReply = await request.app[MANAGER].request(SnapshotRequest)
    store = request.app[STORE]
    shown: dict[str, SlotInfo] = {}
    for slot in snap.status.slots:
        if slot.state in LOADED and (slot.model not in shown or slot.kind == SlotKind.CHAT):
            shown[slot.model] = slot
    models = []
    for name, slot in shown.items():
        entry = store.get(name)
        if entry is not None:
            models.append(running(entry, slot))
    return json_reply({"models": models})


def running(entry: ModelEntry, slot: SlotInfo) -> dict[str, Any]:
    size = slot.measured_bytes or slot.charged_bytes or slot.estimate_bytes
    if slot.expires_at is not None:
        expires = slot.expires_at
    elif slot.keep_alive_s is None:
        expires = time.time() + FOREVER_S  # kept until evicted or unloaded
    else:
        expires = time.time() + slot.keep_alive_s  # busy now; the clock starts when it is idle
    name = tagged(entry.name)
    return {"name": name, "model": name, "size": size, "digest": digest(entry), "details": details(entry),
            "expires_at": rfc3339(expires), "size_vram": size if slot.gpu_layers else 0,
            "context_length": slot.ctx_size}
