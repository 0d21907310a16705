"""Which installed model a request names (a name that breaks the naming rule is a 400), and whether it
can do what is asked: before any engine work.

The gateway reads the store's index itself (every process may read it; the
manager alone writes it). A name Ollama clients suffix with `:latest` finds
the model installed without a tag; a catalog shortcut finds the model pulled
under its canonical name (`qwen3:8b` finds `qwen3:8b:4bit`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

from aiohttp import web

from catalog.entries import CatalogError, load_catalog
from catalog.store import ModelStore, StoreError, check_name
from gateway.dataplane.model import Message
from gateway.errors import ApiError
from gateway.keys import PATHS, STORE
from manager.protocol import ModelEntry, SlotKind

log = logging.getLogger("lmforge.gateway")

IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
WHAT = {SlotKind.CHAT: "chat", SlotKind.EMBED: "embeddings", SlotKind.RERANK: "reranking"}


def valid_name(name: str, field: str = "model") -> str:
    """`name` when it passes the store's one naming rule; a 400 naming `field` otherwise.

    Every route that takes a model name checks it here, before it is looked up or sent to the manager."""
    try:
        return check_name(name)
    except StoreError as exc:
        raise ApiError(400, f"{field}: {exc}", param=field, code="invalid_model_name") from None


def find_model(request: web.Request, name: str) -> ModelEntry:
    """The installed model `name` names; 400 for a name no model can have, 404 model_not_found otherwise."""
    entry, shortcut = lookup(request, name)
    if entry is None:
        # Ollama's words, which its clients show as they are; /v1/models lists what is installed.
        hint = f"; pull it with `lmforge pull {name}`" if shortcut else ""
        raise ApiError(404, f"model '{name}' not found{hint}", param="model", code="model_not_found")
    return entry


def installed_name(request: web.Request, name: str, field: str = "model") -> str:
    """The name the manager knows the model `name` by (a short name becomes the installed one); `name` itself
    when nothing installed answers to it, so that the manager's own 404 words it."""
    entry, _ = lookup(request, valid_name(name, field))
    return entry.name if entry is not None else name


def lookup(request: web.Request, name: str) -> tuple[ModelEntry | None, bool]:
    """The installed model `name` names (see find_in), after the naming rule's 400."""
    valid_name(name)
    return find_in(request.app[STORE], request.app[PATHS].home, name)


def find_in(store: ModelStore, home: Path, name: str) -> tuple[ModelEntry | None, bool]:
    """The installed model `name` names, by the store's one rule (ModelStore.find: exact, with or without
    Ollama's `:latest`, then a catalog shortcut in its canonical form: `qwen3:8b` finds `qwen3:8b:4bit`), and
    whether the catalog knows the name at all (for the 404's hint). The catalog is cached."""
    try:
        catalog = load_catalog(home)
    except (CatalogError, OSError):  # a broken catalog override must not turn a 404 into a 500
        log.warning("the catalog could not be read to look up %r", name, exc_info=True)
        return store.get(name) or store.get(name.removesuffix(":latest")), False
    entry = store.find(name, catalog)
    return entry, entry is None and catalog.match(name) is not None


def can_do(entry: ModelEntry) -> list[str]:
    """What a model can do, in words, for error messages and listings."""
    found = [WHAT[k] for k in entry.kinds]
    if SlotKind.CHAT in entry.kinds:
        found += [name for name, on in (("tools", entry.tools), ("thinking", entry.thinking),
                                        ("vision", entry.vision)) if on]
    return found


def require_kind(entry: ModelEntry, kind: SlotKind) -> None:
    """400 naming the model and what it can do, when it cannot serve `kind`."""
    if kind not in entry.kinds:
        raise ApiError(400, f"model {entry.name!r} does not support {WHAT[kind]}; it can do: "
                       f"{', '.join(can_do(entry))}", param="model", code="not_supported")


def require_vision(entry: ModelEntry, messages: Sequence[Message | dict[str, Any]]) -> None:
    """400 vision_not_supported when any message (a request's own, or internal) carries an image and the
    model has no vision."""
    if not entry.vision and any(has_image(m) for m in messages):
        raise ApiError(400, f"model {entry.name!r} cannot read images (no vision projector was imported "
                       f"with it); it can do: {', '.join(can_do(entry))}", param="messages",
                       code="vision_not_supported")


def has_image(message: Message | dict[str, Any]) -> bool:
    if isinstance(message, dict) and message.get("images"):  # Ollama's form
        return True
    return next(image_parts([message]), None) is not None


def image_parts(messages: Sequence[Message | dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The image parts of messages (internal ones, or OpenAI message objects as a client sent them)."""
    for message in messages:
        content = message.content if isinstance(message, Message) else (
            message.get("content") if isinstance(message, dict) else None)
        if isinstance(content, list):
            yield from (p for p in content if isinstance(p, dict) and isinstance(p.get("type"), str)
                        and p["type"] in IMAGE_PARTS)
