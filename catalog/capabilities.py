"""What a model can do, decided once at import from its GGUF header (and its vision projector's).

The chat template is the evidence: llama.cpp renders tools and reasoning through
it, so a template that never mentions them cannot serve them.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog.gguf_info import GGUFInfo
from manager.engines.llamacpp import has_chat_template
from manager.protocol import SlotKind

TOOL_MARKERS = ("tools", "tool_calls")
THINKING_MARKERS = ("<think>", "enable_thinking", "reasoning_content")
PROJECTOR_ARCH = "clip"


@dataclass(frozen=True)
class Capabilities:
    kinds: tuple[SlotKind, ...]
    chat_template: bool = False
    tools: bool = False
    thinking: bool = False
    vision: bool = False


def kinds_for(info: GGUFInfo) -> tuple[SlotKind, ...]:
    """What a model can serve, from the pooling its header declares."""
    if info.pooling == "rank":
        return (SlotKind.RERANK,)
    if info.pooling in ("mean", "cls", "last"):
        return (SlotKind.EMBED,)
    # A generative model; llama.cpp can also pool it into embeddings.
    return (SlotKind.CHAT, SlotKind.EMBED)


def is_projector(info: GGUFInfo) -> bool:
    """A vision (or audio) projector, llama.cpp's mmproj: loaded beside a text model, never alone."""
    return info.architecture == PROJECTOR_ARCH


def has_vision_encoder(projector: GGUFInfo) -> bool:
    return is_projector(projector) and projector.metadata.get("clip.has_vision_encoder") is True


def capabilities_of(info: GGUFInfo, projector: GGUFInfo | None = None) -> Capabilities:
    """The model's capabilities; `projector` is the mmproj imported with it, if any."""
    kinds = kinds_for(info)
    text = info.chat_template
    chats = SlotKind.CHAT in kinds
    return Capabilities(
        kinds=kinds,
        chat_template=chats and has_chat_template(info),
        tools=chats and any(marker in text for marker in TOOL_MARKERS),
        thinking=chats and any(marker in text for marker in THINKING_MARKERS),
        vision=chats and projector is not None and has_vision_encoder(projector),
    )
