"""The model store: model files under `<home>/models` and their index, `models.json`.

Writers hold an flock on `models.json.lock` and replace the index atomically
(temp file, fsync, rename, fsync of the directory), so a crash mid-write leaves
the previous index whole. Readers re-parse only when the file changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import msgspec

from catalog.gguf_info import GGUFInfo, read_gguf_info
from manager.config import Paths
from manager.protocol import ModelEntry, SlotKind

SCHEMA_VERSION = 1
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")


class StoreError(Exception):
    """A store operation was refused; the message says why and what to do."""


class Index(msgspec.Struct, kw_only=True):
    schema_version: int = SCHEMA_VERSION
    models: list[ModelEntry] = []


_decoder = msgspec.json.Decoder(Index)


def check_name(name: str) -> str:
    if not NAME_RULE.match(name) or ".." in name or "//" in name:
        raise StoreError(
            f"invalid model name {name!r}: use letters, digits and . _ : / + - "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return name


def kinds_for(info: GGUFInfo) -> tuple[SlotKind, ...]:
    """What a model can serve, from the pooling its header declares."""
    if info.pooling == "rank":
        return (SlotKind.RERANK,)
    if info.pooling in ("mean", "cls", "last"):
        return (SlotKind.EMBED,)
    # A generative model; llama.cpp can also pool it into embeddings.
    return (SlotKind.CHAT, SlotKind.EMBED)


class ModelStore:
    """The index and the files it names. Every process may read; writers lock."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._cache: tuple[tuple[int, int, int], Index] | None = None

    # --- reading ---

    def list(self) -> list[ModelEntry]:
        return list(self._read().models)

    def get(self, name: str) -> ModelEntry | None:
        return next((m for m in self._read().models if m.name == name), None)

    def _read(self) -> Index:
        try:
            st = self.paths.index.stat()
        except FileNotFoundError:
            return Index()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache is None or self._cache[0] != stamp:
            try:
                self._cache = (stamp, _decoder.decode(self.paths.index.read_bytes()))
            except msgspec.DecodeError as exc:
                raise StoreError(f"{self.paths.index} is damaged ({exc}); restore it or remove it") from None
        return self._cache[1]

    # --- writing ---

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Index]:
        self.paths.home.mkdir(parents=True, exist_ok=True)
        with open(self.paths.home / "models.json.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._cache = None
            yield self._read()

    def add(self, entry: ModelEntry) -> ModelEntry:
        with self._locked() as index:
            models = [m for m in index.models if m.name != entry.name] + [entry]
            self._write(Index(models=sorted(models, key=lambda m: m.name)))
        return entry

    def remove(self, name: str) -> ModelEntry:
        with self._locked() as index:
            entry = next((m for m in index.models if m.name == name), None)
            if entry is None:
                raise StoreError(f"model {name!r} is not installed")
            self._write(Index(models=[m for m in index.models if m.name != name]))
        model_dir = Path(entry.path).parent
        if model_dir.parent == self.paths.models:
            shutil.rmtree(model_dir, ignore_errors=True)
        return entry

    def _write(self, index: Index) -> None:
        data = msgspec.json.format(msgspec.json.encode(index), indent=2)
        write_atomic(self.paths.index, data)
        self._cache = None

    # --- importing ---

    def model_dir(self, name: str) -> Path:
        """Each name gets its own directory; the hash keeps "a:b" and "a-b" apart."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
        return self.paths.models / f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"

    def import_gguf(self, source: Path, name: str, *, source_label: str = "import") -> ModelEntry:
        """Check a GGUF file, place it in the store and index it under `name`."""
        check_name(name)
        source = source.expanduser().absolute()
        if not source.is_file():
            raise StoreError(f"{source} does not exist or is not a file")
        info = read_gguf_info(source)  # GGUFError names what is wrong with the file
        target = self.model_dir(name) / source.name
        if source == target:
            return self.add(entry_for(name, target, info, sha256_file(target), source_label))
        created_dir, created_file = not target.parent.exists(), not target.exists()
        place_file(source, target)
        try:
            return self.add(entry_for(name, target, info, sha256_file(target), source_label))
        except BaseException:
            # A refused import leaves the store as it was: no file, no directory, no entry.
            if created_file:
                target.unlink(missing_ok=True)
            if created_dir:
                shutil.rmtree(target.parent, ignore_errors=True)
            raise


def entry_for(name: str, path: Path, info: GGUFInfo, sha256: str, source: str) -> ModelEntry:
    return ModelEntry(
        name=name,
        path=str(path),
        format="gguf",
        size_bytes=path.stat().st_size,
        sha256=sha256,
        added_at=time.time(),
        source=source,
        kinds=kinds_for(info),
        architecture=info.architecture,
        context_length=info.context_length,
        parameters=info.parameters,
        quantization=info.quantization,
    )


def place_file(source: Path, target: Path) -> None:
    """Hard-link when the store is on the same filesystem, copy otherwise; atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a copy cut short (disk full, Ctrl-C) leaves no partial file
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
