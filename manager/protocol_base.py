"""The part of the wire contract every other part builds on: the message bases, the slot kinds and the model entry.

Apart from manager/protocol.py so that protocol_pulls.py can build on it too; protocol.py re-exports every name
here (import them from there).
"""

from __future__ import annotations

import enum

import msgspec

__all__ = ["Event", "ModelEntry", "Notice", "Reply", "Request", "SlotKind"]


class SlotKind(enum.StrEnum):
    """What a slot's engine serves; one model may have one slot of each kind."""

    CHAT = "chat"
    EMBED = "embed"
    RERANK = "rerank"


class ModelEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One installed model, as the store answers it (the index's own on-disk schema is catalog/index_file.py)."""

    name: str
    path: str  # what the engine is given, absolute: the GGUF file (a split one's first shard), or the directory
    format: str = "gguf"
    size_bytes: int = 0
    sha256: str = ""
    added_at: float = 0.0
    source: str = "import"  # "import", "embedded", or a Hugging Face repo
    kinds: tuple[SlotKind, ...] = (SlotKind.CHAT,)
    architecture: str = ""
    context_length: int = 0
    parameters: int = 0
    quantization: str = ""
    # Capabilities, from the GGUF header (catalog/capabilities.py); older index files lack them.
    tools: bool = False
    thinking: bool = False
    vision: bool = False
    mmproj: str = ""  # the vision projector GGUF imported with the model, absolute; "" when none
    chat_template: bool = False  # the file carries one, or the engine has one built in for its architecture
    # Every file of the model lives in one directory: all shards of a split GGUF, the mmproj, or the weights,
    # tokenizer and config of safetensors and MLX models.
    dir: str = ""  # absolute; "" only for entries that name a single file outside the store
    files: tuple[str, ...] = ()  # relative to `dir`, the primary file and the mmproj included
    repo: str = ""  # the Hugging Face repo it was pulled from
    revision: str = ""  # the commit the files came from
    quant: str = ""  # the quant pulled, e.g. "Q4_K_M"
    catalog: str = ""  # the catalog shortcut it was pulled as, canonical, e.g. "qwen3:8b:4bit"
    options: dict[str, float | int | str | bool] = {}  # default request options from the catalog


# ----------------------------------------------------------------------------
# Message bases. The tag of each message is its class name.


class Request(msgspec.Struct, tag=True, kw_only=True, frozen=True):
    """Sent to the manager; answered by exactly one Reply with the same req_id."""

    req_id: int


class Reply(msgspec.Struct, tag=True, kw_only=True, frozen=True):
    req_id: int


class Notice(msgspec.Struct, tag=True, kw_only=True, frozen=True):
    """One-way message; no answer."""


class Event(msgspec.Struct, tag=True, kw_only=True, frozen=True):
    """Published by the manager; seq grows by one per event within an epoch."""

    seq: int = 0
