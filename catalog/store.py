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

from catalog.capabilities import PROJECTOR_ARCH, capabilities_of, is_projector
from catalog.gguf_info import GGUFInfo, read_gguf_info
from manager.config import Paths
from manager.protocol import ModelEntry

SCHEMA_VERSION = 1
# The one rule for model names, wherever one comes from (an API route, the CLI, the index). Names
# never become paths as they are (model_dir() hashes them), and this keeps them from ever looking
# like one that escapes: no "..", no "//", no leading "/", no "%", NUL, CR or LF, at most 128 characters.
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")


class StoreError(Exception):
    """A store operation was refused; the message says why and what to do."""


class ModelNotFound(StoreError):
    """The model named is not in the index."""


class Index(msgspec.Struct, kw_only=True):
    schema_version: int = SCHEMA_VERSION
    models: list[ModelEntry] = []


_decoder = msgspec.json.Decoder(Index)


def check_name(name: str) -> str:
    if not NAME_RULE.fullmatch(name) or ".." in name or "//" in name:
        shown = repr(name) if len(name) <= 60 else f"{name[:57]!r}..."
        raise StoreError(
            f"invalid model name {shown}: use letters, digits and . _ : / + - "
            "(at most 128 characters, starting with a letter or digit, no '..' or '//')"
        )
    return name


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
        """Drop the entry, then its directory: no other entry names a file in it, as each name has its own
        (`model_dir`; a copy hard-links into the copy's)."""
        with self._locked() as index:
            entry = next((m for m in index.models if m.name == name), None)
            if entry is None:
                raise ModelNotFound(f"model {name!r} is not installed")
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

    def import_gguf(self, source: Path, name: str, *, mmproj: Path | None = None,
                    source_label: str = "import", sha256: str = "") -> ModelEntry:
        """Check a GGUF file (and its vision projector), place it in the store and index it under `name`.

        `sha256` spares hashing the file again only when `source` is the uploaded blob of that digest."""
        check_name(name)
        source = _existing_file(source)
        info = read_gguf_info(source)  # GGUFError names what is wrong with the file
        if is_projector(info):
            raise StoreError(f"{source.name} is a vision projector (mmproj), not a model: import the model's "
                             "GGUF and pass this file as its mmproj")
        target_dir = self.model_dir(name)
        files = [(source, target_dir / source.name)]
        projector = None
        if mmproj is not None:
            mmproj = _existing_file(mmproj)
            projector = read_gguf_info(mmproj)
            if not is_projector(projector):
                raise StoreError(f"{mmproj.name} is not a vision projector: its architecture is "
                                 f"{projector.architecture!r}, not {PROJECTOR_ARCH!r}")
            files.append((mmproj, target_dir / _projector_name(mmproj)))
        with _placed(files):
            target = files[0][1]
            known = sha256 if _is_blob_of(self.paths, source, sha256) else sha256_file(target)
            entry = entry_for(name, target, info, known, source_label,
                              mmproj=files[1][1] if projector else None, projector=projector)
            return self._replace(entry)

    def copy(self, source: str, destination: str) -> ModelEntry:
        """`destination` names the same files (hard links in its own directory, so either may be deleted)."""
        check_name(destination)
        entry = self.get(source)
        if entry is None:
            raise ModelNotFound(f"model {source!r} is not installed")
        if destination == source:
            return entry
        target_dir = self.model_dir(destination)
        files = [(Path(p), target_dir / Path(p).name) for p in (entry.path, entry.mmproj) if p]
        with _placed(files):
            copied = msgspec.structs.replace(
                entry, name=destination, path=str(files[0][1]), added_at=time.time(),
                mmproj=str(files[1][1]) if entry.mmproj else "")
            return self._replace(copied)

    def _replace(self, entry: ModelEntry) -> ModelEntry:
        """Index `entry`; files a former model of that name left in its directory go."""
        self.add(entry)
        model_dir = Path(entry.path).parent
        if model_dir.parent != self.paths.models:
            return entry
        keep = {Path(entry.path).name, Path(entry.mmproj).name if entry.mmproj else ""}
        for stale in model_dir.iterdir():
            if stale.is_file() and stale.name not in keep and not stale.name.startswith("."):
                stale.unlink(missing_ok=True)
        return entry


def _is_blob_of(paths: Paths, source: Path, sha256: str) -> bool:
    """An uploaded blob is kept under the digest its bytes were checked against as they streamed in
    (POST /api/blobs): its name vouches for the hash; a digest claimed for any other file does not."""
    return bool(sha256) and source.parent == paths.blobs and source.name == f"sha256-{sha256}"


def _existing_file(path: Path) -> Path:
    path = path.expanduser().absolute()
    if not path.is_file():
        raise StoreError(f"{path} does not exist or is not a file")
    return path


def _projector_name(mmproj: Path) -> str:
    """Its own name in the model's directory, never the model file's."""
    return mmproj.name if mmproj.name.startswith("mmproj") else f"mmproj-{mmproj.name}"


@contextlib.contextmanager
def _placed(files: list[tuple[Path, Path]]) -> Iterator[None]:
    """Place each (source, target); a refused import or copy leaves no file and no directory it created."""
    created: list[Path] = []
    try:
        for source, target in files:
            for path in (target.parent, target):
                if not path.exists() and path not in created:
                    created.append(path)
            if source != target:
                place_file(source, target)
        yield
    except BaseException:
        for path in reversed(created):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


def entry_for(name: str, path: Path, info: GGUFInfo, sha256: str, source: str, *,
              mmproj: Path | None = None, projector: GGUFInfo | None = None) -> ModelEntry:
    can = capabilities_of(info, projector)
    return ModelEntry(
        name=name,
        path=str(path),
        format="gguf",
        size_bytes=path.stat().st_size,
        sha256=sha256,
        added_at=time.time(),
        source=source,
        kinds=can.kinds,
        architecture=info.architecture,
        context_length=info.context_length,
        parameters=info.parameters,
        quantization=info.quantization,
        tools=can.tools,
        thinking=can.thinking,
        vision=can.vision,
        mmproj=str(mmproj) if mmproj else "",
        chat_template=can.chat_template,
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
