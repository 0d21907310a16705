"""The on-disk schema of `models.json`, versioned apart from the wire types (manager/protocol.py's ModelEntry).

v2 keeps a model's directory relative to the models directory and its files relative to that directory, so a
moved store still reads; v1 (absolute `path` and `mmproj`) is read and migrated; a newer file is refused untouched.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from manager.protocol import ModelEntry, SlotKind

SCHEMA_VERSION = 2


class StoreError(Exception):
    """A store operation was refused; the message says why and what to do."""


class StoredModel(msgspec.Struct, kw_only=True, frozen=True):
    """One model as v2 writes it. Fields a later minor version adds are ignored on read (msgspec's default)."""

    name: str
    format: str = "gguf"
    dir: str = ""  # relative to the models directory when inside it, else absolute; "" for a lone file elsewhere
    files: tuple[str, ...] = ()  # relative to dir
    primary: str = ""  # relative to dir (absolute when outside it); "" means the directory itself
    mmproj: str = ""  # relative to dir (absolute when outside it); "" when none
    size_bytes: int = 0
    sha256: str = ""  # of the primary file
    added_at: float = 0.0
    source: str = "import"
    repo: str = ""
    revision: str = ""
    quant: str = ""
    catalog: str = ""
    options: dict[str, float | int | str | bool] = {}
    kinds: tuple[str, ...] = ("chat",)
    architecture: str = ""
    context_length: int = 0
    parameters: int = 0
    quantization: str = ""
    tools: bool = False
    thinking: bool = False
    vision: bool = False
    chat_template: bool = False


class IndexFile(msgspec.Struct, kw_only=True):
    schema_version: int = SCHEMA_VERSION
    models: list[StoredModel] = []


class _Header(msgspec.Struct):
    schema_version: int = 1  # v1 always wrote it; a file without one is taken for v1


class _V1Model(msgspec.Struct, kw_only=True):
    """What schema 1 wrote: the ModelEntry of its day, with absolute paths. Frozen here so that ModelEntry may change."""

    name: str
    path: str
    format: str = "gguf"
    size_bytes: int = 0
    sha256: str = ""
    added_at: float = 0.0
    source: str = "import"
    kinds: tuple[str, ...] = ("chat",)
    architecture: str = ""
    context_length: int = 0
    parameters: int = 0
    quantization: str = ""
    tools: bool = False
    thinking: bool = False
    vision: bool = False
    mmproj: str = ""
    chat_template: bool = False


class _V1Index(msgspec.Struct):
    models: list[_V1Model] = []


_header = msgspec.json.Decoder(_Header)
_v1 = msgspec.json.Decoder(_V1Index)
_v2 = msgspec.json.Decoder(IndexFile)


def decode_index(data: bytes, source: str = "models.json") -> tuple[IndexFile, bool]:
    """The index in `data`, and whether it came from an older schema (and wants rewriting as v2).

    Raises StoreError for a damaged file or one written by a newer LMForge; the caller leaves the file as it is."""
    try:
        version = _header.decode(data).schema_version
        if version > SCHEMA_VERSION:
            raise StoreError(f"{source} was written by a newer LMForge (schema {version}); "
                             "upgrade LMForge or restore a backup")
        if version == 1:
            return IndexFile(models=[_migrated(m) for m in _v1.decode(data).models]), True
        if version == SCHEMA_VERSION:
            return _v2.decode(data), False
    except msgspec.DecodeError as exc:
        raise StoreError(f"{source} is damaged ({exc}); restore it or remove it") from None
    raise StoreError(f"{source} is damaged (schema_version {version}); restore it or remove it")


def encode_index(index: IndexFile) -> bytes:
    return msgspec.json.format(msgspec.json.encode(index), indent=2)


def _migrated(old: _V1Model) -> StoredModel:
    """A v1 entry named one file (and its projector beside it): the directory is the file's."""
    path = Path(old.path)
    files = [path.name] + ([_relative(old.mmproj, path.parent)] if old.mmproj else [])
    fields = {f: getattr(old, f) for f in old.__struct_fields__ if f not in ("path", "mmproj")}
    return StoredModel(**fields, dir=str(path.parent), files=tuple(files), primary=path.name,
                       mmproj=_relative(old.mmproj, path.parent) if old.mmproj else "")


def to_entry(stored: StoredModel, models_dir: Path) -> ModelEntry:
    """The entry the store answers: every path absolute."""
    base = models_dir / stored.dir if stored.dir else None
    path = str(base / stored.primary if stored.primary else base) if base else stored.primary
    mmproj = str(base / stored.mmproj) if base and stored.mmproj else stored.mmproj
    return ModelEntry(
        name=stored.name, path=path, format=stored.format, size_bytes=stored.size_bytes, sha256=stored.sha256,
        added_at=stored.added_at, source=stored.source, kinds=_kinds(stored.kinds),
        architecture=stored.architecture, context_length=stored.context_length, parameters=stored.parameters,
        quantization=stored.quantization, tools=stored.tools, thinking=stored.thinking, vision=stored.vision,
        mmproj=mmproj, chat_template=stored.chat_template, dir=str(base) if base else "", files=stored.files,
        repo=stored.repo, revision=stored.revision, quant=stored.quant, catalog=stored.catalog,
        options=dict(stored.options))


def from_entry(entry: ModelEntry, models_dir: Path) -> StoredModel:
    """The entry as v2 stores it: its directory relative to the models directory when inside it."""
    base = Path(entry.dir) if entry.dir else None
    if base is None:
        primary, mmproj = entry.path, entry.mmproj
    else:
        primary = "" if Path(entry.path) == base else _relative(entry.path, base)
        mmproj = _relative(entry.mmproj, base) if entry.mmproj else ""
    return StoredModel(
        name=entry.name, format=entry.format, dir=_relative(entry.dir, models_dir) if base else "",
        files=entry.files, primary=primary, mmproj=mmproj, size_bytes=entry.size_bytes, sha256=entry.sha256,
        added_at=entry.added_at, source=entry.source, repo=entry.repo, revision=entry.revision, quant=entry.quant,
        catalog=entry.catalog, options=dict(entry.options), kinds=tuple(str(k) for k in entry.kinds),
        architecture=entry.architecture, context_length=entry.context_length, parameters=entry.parameters,
        quantization=entry.quantization, tools=entry.tools, thinking=entry.thinking, vision=entry.vision,
        chat_template=entry.chat_template)


def _relative(path: str, base: Path) -> str:
    """`path` relative to `base` when inside it, else as it is (absolute)."""
    try:
        relative = Path(path).relative_to(base)
    except ValueError:
        return path
    return str(relative)


def _kinds(names: tuple[str, ...]) -> tuple[SlotKind, ...]:
    """Kinds this version knows; one that a later version added is left out rather than refused."""
    known = {k.value for k in SlotKind}
    return tuple(SlotKind(k) for k in names if k in known)
