"""How Ollama describes an installed model: its tagged name, digest, details, capabilities, GGUF header.

The header is read once per file version (catalog/gguf_info.py caches it) and off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any


from catalog.gguf_info import GGUFError, GGUFInfo, cached_gguf_info
from manager.protocol import ModelEntry, SlotKind

# llama.cpp fills in the middle with these tokens; either naming (the newer first) marks a model that can.
FIM_KEYS = (("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id"),
            ("tokenizer.ggml.prefix_token_id", "tokenizer.ggml.suffix_token_id", "tokenizer.ggml.middle_token_id"))


def tagged(name: str) -> str:
    """Ollama's names always carry a tag; a model installed without one is `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def digest(entry: ModelEntry) -> str:
    """Distinct per model, as Ollama's manifest digests are: two names for one file differ too."""
    return hashlib.sha256(f"{entry.name}\n{entry.sha256 or entry.path}".encode()).hexdigest()


def human_number(n: int) -> str:
    """A parameter count as Ollama writes it: 8B, 7.6B, 268.10M, 22M, 512K."""
    for scale, unit, places in ((1e9, "B", 1), (1e6, "M", 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value.is_integer() else f"{value:.{places}f}{unit}"
    return f"{n / 1e3:.0f}K" if n >= 1000 else str(n)


def details(entry: ModelEntry) -> dict[str, Any]:
    family = entry.architecture
    return {"parent_model": "", "format": entry.format, "family": family, "families": [family] if family else None,
            "parameter_size": human_number(entry.parameters) if entry.parameters else "",
            "quantization_level": entry.quantization}


def capabilities(entry: ModelEntry, info: GGUFInfo | None) -> list[str]:
    """Ollama's capability words, from the index entry's kinds and flags and the header's FIM tokens."""
    found = []
    if SlotKind.CHAT in entry.kinds:
        found.append("completion")
    elif SlotKind.EMBED in entry.kinds:  # Ollama says "embedding" of embedding models only
        found.append("embedding")
    found += [word for word, on in (("tools", entry.tools), ("thinking", entry.thinking),
                                    ("vision", entry.vision)) if on]
    if SlotKind.CHAT in entry.kinds and info is not None and can_insert(info):
        found.append("insert")
    return found


def can_insert(info: GGUFInfo) -> bool:
    return any(all(key in info.metadata for key in keys) for keys in FIM_KEYS)


async def header(entry: ModelEntry) -> GGUFInfo | None:
    """The model file's GGUF header, read off the event loop; None when the file cannot be read now."""
    try:
        return await asyncio.to_thread(cached_gguf_info, entry.path)
    except (OSError, GGUFError):
        return None
