"""The model store: model files under `<home>/models` and their index, `models.json`.

Writers hold an flock on `models.json.lock` and replace the index atomically
(temp file, fsync, rename, fsync of the directory), so a crash mid-write leaves
the previous index whole. Readers re-parse only when the file changed. The file's
schema is catalog/index_file.py's; the store answers ModelEntry, with absolute paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Iterator

import msgspec

from catalog.capabilities import PROJECTOR_ARCH, THINKING_MARKERS, TOOL_MARKERS, capabilities_of, is_projector
from catalog.entries import Catalog, is_hub_name, load_catalog, pull_key
from catalog.gguf_info import GGUFInfo, read_gguf_info
from catalog.index_file import SCHEMA_VERSION, IndexFile, StoreError, decode_index, encode_index, from_entry, to_entry
from catalog.store_files import (
    existing_file, inside, is_inside, place_file, placed, remove_tree, sha256_file, write_atomic,
)
from manager.config import Paths
from manager.protocol import ModelEntry, PullFile, PullPlan, SlotKind

__all__ = ["SCHEMA_VERSION", "ModelNotFound", "ModelStore", "StoreError", "check_name", "entry_for", "place_file",
           "sha256_file", "write_atomic"]

# The one rule for model names, wherever one comes from (an API route, the CLI, the index). Names
# never become paths as they are (model_dir() hashes them), and this keeps them from ever looking
# like one that escapes: no "..", no "//", no leading "/", no "%", NUL, CR or LF, at most 128 characters.
# "@" is a Hub name's revision (owner/repo@v2:Q4_K_M).
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+@-]{0,127}$")
# Where migrate() keeps the index as an earlier version wrote it, for a downgrade or a look back.
V1_BACKUP = "models.json.v1.bak"


class ModelNotFound(StoreError):
    """The model named is not in the index."""


def check_name(name: str) -> str:
    if not NAME_RULE.fullmatch(name) or ".." in name or "//" in name:
        shown = repr(name) if len(name) <= 60 else f"{name[:57]!r}..."
        raise StoreError(
            f"invalid model name {shown}: use letters, digits and . _ : / + @ - "
            "(at most 128 characters, starting with a letter or digit, no '..' or '//')"
        )
    return name


class ModelStore:
    """The index and the files it names. Every process may read; writers lock."""

    def __init__(self, paths: Paths, remote: tuple[ModelEntry, ...] = ()) -> None:
        self.paths = paths
        # Models served by engines elsewhere (config `[[remote]]`, manager/config_remote.py): listed and found with
        # the installed ones, a remote name hiding an installed model of the same name; never in the index.
        self.remote = remote
        # (stat stamp, entries, whether the file is of an older schema)
        self._cache: tuple[tuple[int, int, int], list[ModelEntry], bool] | None = None

    # --- reading ---

    def list(self) -> list[ModelEntry]:
        return self._models()

    def get(self, name: str) -> ModelEntry | None:
        return next((m for m in self._models() if m.name == name), None)

    def _not_remote(self, name: str) -> None:
        if any(m.name == name for m in self.remote):
            raise StoreError(f"{name!r} is a [[remote]] model in config.toml, served elsewhere: change or remove its "
                             "entry there")

    def _models(self) -> list[ModelEntry]:
        if not self.remote:
            return list(self._read())
        names = {m.name for m in self.remote}
        return [*self.remote, *(m for m in self._read() if m.name not in names)]

    def find(self, name: str, catalog: Catalog | None = None) -> ModelEntry | None:
        """The installed model a name means, as a user types it: the exact name, then without or with ":latest", then the
        catalog's canonical form (`qwen3:8b` is stored as `qwen3:8b:4bit`) or an entry pulled as that shortcut, or
        for a Hub name its stored normal form (`hf.co/o/r:q4_k_m` is `o/R:Q4_K_M`). None when none is."""
        models = self._models()
        text = name.strip()
        for candidate in (text, text.removesuffix(":latest"), f"{text}:latest"):
            if found := next((m for m in models if m.name == candidate), None):
                return found
        if is_hub_name(text):
            key = pull_key(text)
            return next((m for m in models if is_hub_name(m.name) and pull_key(m.name) == key), None)
        match = (catalog or load_catalog(self.paths.home)).match(text)
        if match is None:
            return None
        return next((m for m in models if m.name == match.canonical), None) \
            or next((m for m in models if m.catalog == match.canonical), None)

    def _read(self) -> list[ModelEntry]:
        try:
            st = self.paths.index.stat()
        except FileNotFoundError:
            self._cache = None
            return []
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache is None or self._cache[0] != stamp:
            index, older = decode_index(self.paths.index.read_bytes(), str(self.paths.index))
            self._cache = (stamp, [to_entry(m, self.paths.models) for m in index.models], older)
        return self._cache[1]

    # --- writing ---

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[ModelEntry]]:
        self.paths.home.mkdir(parents=True, exist_ok=True)
        with open(self.paths.home / "models.json.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._cache = None
            yield self._read()

    def _write(self, models: list[ModelEntry]) -> None:
        """Only under the lock, after _read: an index of an older schema is kept aside before its first rewrite."""
        if self._cache is not None and self._cache[2]:
            write_atomic(self.paths.home / V1_BACKUP, self.paths.index.read_bytes())
        stored = [from_entry(m, self.paths.models) for m in sorted(models, key=lambda m: m.name)]
        write_atomic(self.paths.index, encode_index(IndexFile(models=stored)))
        self._cache = None

    def migrate(self) -> bool:
        """Rewrite an index that an earlier version wrote in the current schema (the old file kept as
        models.json.v1.bak). True when it did; a newer schema is refused (StoreError) and left as it is."""
        if not self.paths.index.exists():
            return False
        with self._locked() as models:
            if self._cache is None or not self._cache[2]:
                return False
            self._write(models)
        return True

    def add(self, entry: ModelEntry) -> ModelEntry:
        """Index `entry`, replacing one of its name; the files that one named and no entry names now go."""
        self._not_remote(entry.name)
        with self._locked() as models:
            former = next((m for m in models if m.name == entry.name), None)
            kept = [m for m in models if m.name != entry.name] + [entry]
            self._write(kept)
            if former is not None:
                self._drop_unused(former, kept)
        return entry

    def remove(self, name: str) -> ModelEntry:
        """Drop the entry, then its directory, unless another entry uses it (a pulled quant may be indexed
        under both its catalog shortcut and its repo name). Another quant's directory is another directory."""
        self._not_remote(name)
        with self._locked() as models:
            entry = next((m for m in models if m.name == name), None)
            if entry is None:
                raise ModelNotFound(f"model {name!r} is not installed")
            kept = [m for m in models if m.name != name]
            self._write(kept)
            self._drop_unused(entry, kept)
        return entry

    def _drop_unused(self, gone: ModelEntry, kept: list[ModelEntry]) -> None:
        """Delete what `gone` named inside the models directory and no entry in `kept` names: its whole directory
        when no entry uses it any more, else only its own files. Files outside the store are never touched."""
        if not gone.dir or not is_inside(Path(gone.dir), self.paths.models):
            return
        home = Path(gone.dir).resolve()
        users = [m for m in kept if _overlap(Path(m.dir or m.path).resolve(), home)]
        if not users:
            remove_tree(Path(gone.dir), self.paths.models)
            return
        named = {p.resolve() for m in users for p, _ in _layout(m)}
        for path, _ in _layout(gone):
            if path.resolve() not in named and is_inside(path, home):
                path.unlink(missing_ok=True)

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
        source = existing_file(source)
        info = read_gguf_info(source)  # GGUFError names what is wrong with the file
        if is_projector(info):
            raise StoreError(f"{source.name} is a vision projector (mmproj), not a model: import the model's "
                             "GGUF and pass this file as its mmproj")
        target_dir = self.model_dir(name)
        files = [(source, target_dir / source.name)]
        projector = None
        if mmproj is not None:
            mmproj = existing_file(mmproj)
            projector = read_gguf_info(mmproj)
            if not is_projector(projector):
                raise StoreError(f"{mmproj.name} is not a vision projector: its architecture is "
                                 f"{projector.architecture!r}, not {PROJECTOR_ARCH!r}")
            files.append((mmproj, target_dir / _projector_name(mmproj)))
        with placed(files):
            target = files[0][1]
            known = sha256 if _is_blob_of(self.paths, source, sha256) else sha256_file(target)
            entry = entry_for(name, target, info, known, source_label,
                              mmproj=files[1][1] if projector else None, projector=projector)
            return self.add(entry)

    def copy(self, source: str, destination: str) -> ModelEntry:
        """`destination` names the same files: hard links of every one in its own directory, so either may be
        deleted."""
        check_name(destination)
        self._not_remote(source)
        self._not_remote(destination)
        entry = self.find(source)
        if entry is None:
            raise ModelNotFound(f"model {source!r} is not installed")
        if destination == entry.name:
            return entry
        target_dir = self.model_dir(destination)
        layout = [(existing_file(path), target_dir / relative) for path, relative in _layout(entry)]
        moved = {str(path): str(target) for path, target in layout} | {entry.dir: str(target_dir)}
        with placed(layout):
            copied = msgspec.structs.replace(
                entry, name=destination, added_at=time.time(), dir=str(target_dir), path=moved[entry.path],
                mmproj=moved[entry.mmproj] if entry.mmproj else "",
                files=tuple(str(target.relative_to(target_dir)) for _, target in layout))
            return self.add(copied)

    # --- pulled models ---

    def index_pulled(self, plan: PullPlan) -> ModelEntry:
        """Index the files a pull verified and moved into `models/<plan.directory>`, replacing an entry of its name.

        The downloader checked every hash as it wrote: sizes are checked here, and only a primary file the Hub gave
        no sha256 for (a small, non-LFS one) is hashed."""
        check_name(plan.name)
        directory = inside(self.paths.models, plan.directory, "pull directory")
        if not plan.files:
            raise StoreError(f"cannot index {plan.name}: the pull names no files")
        listed = {f.path: f for f in plan.files}
        for f in plan.files:
            path = inside(directory, f.path, "pulled file")
            if not path.is_file():
                raise StoreError(f"cannot index {plan.name}: {f.path} is missing from {directory}")
            if (size := path.stat().st_size) != f.size:
                raise StoreError(f"cannot index {plan.name}: {f.path} has {size} bytes, the pull expected {f.size}")
        for role, named in (("primary file", plan.primary), ("mmproj", plan.mmproj)):
            if named and named not in listed:
                raise StoreError(f"cannot index {plan.name}: its {role} {named!r} is not one of the pulled files")
        if plan.format == "gguf":
            entry = _gguf_entry(plan, directory, listed)
        else:
            entry = _directory_entry(plan, directory)
        return self.add(entry)


def _gguf_entry(plan: PullPlan, directory: Path, listed: dict[str, PullFile]) -> ModelEntry:
    """A split GGUF's first shard carries the header; the weights are every shard, the projector is counted apart
    (the engine's memory plan adds it for a chat slot)."""
    if not plan.primary:
        raise StoreError(f"cannot index {plan.name}: a GGUF pull must name its primary file")
    primary = directory / plan.primary
    info = read_gguf_info(primary)
    if is_projector(info):
        raise StoreError(f"cannot index {plan.name}: {plan.primary} is a vision projector, not a model")
    projector = None
    if plan.mmproj:
        projector = read_gguf_info(directory / plan.mmproj)
        if not is_projector(projector):
            raise StoreError(f"cannot index {plan.name}: {plan.mmproj} is not a vision projector")
    shards = [f for f in plan.files if f.path == plan.primary
              or (f.role == "weights" and f.path != plan.mmproj and f.path.endswith(".gguf"))]
    others = [read_gguf_info(directory / f.path) for f in shards if f.path != plan.primary]
    entry = entry_for(plan.name, primary, info, listed[plan.primary].sha256 or sha256_file(primary), plan.source,
                      mmproj=directory / plan.mmproj if plan.mmproj else None, projector=projector)
    kinds = plan.kinds or entry.kinds
    chats = SlotKind.CHAT in kinds
    return msgspec.structs.replace(
        entry, size_bytes=sum(f.size for f in shards) or primary.stat().st_size, kinds=kinds,
        parameters=info.parameters + sum(i.parameters for i in others),
        context_length=entry.context_length or plan.context_length, tools=entry.tools and chats,
        thinking=entry.thinking and chats, vision=entry.vision and chats, **_pulled_fields(plan, directory))


def _directory_entry(plan: PullPlan, directory: Path) -> ModelEntry:
    """safetensors and MLX: the engine is given the directory; what it is comes from config.json and the
    tokenizer's files."""
    config = _json_of(directory, "config.json", plan)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    template = _chat_template(directory, plan)
    kinds = plan.kinds or (SlotKind.CHAT,)
    chats = SlotKind.CHAT in kinds
    weights = [f for f in plan.files if f.role == "weights"]
    return ModelEntry(
        name=plan.name, path=str(directory / plan.primary if plan.primary else directory), format=plan.format,
        size_bytes=sum(f.size for f in weights or plan.files),
        sha256=next((f.sha256 for f in plan.files if f.path == plan.primary), "") if plan.primary else "",
        added_at=time.time(), source=plan.source, kinds=kinds, architecture=str(config.get("model_type") or ""),
        context_length=_int(text.get("max_position_embeddings")) or plan.context_length, quantization=plan.quant,
        tools=chats and any(m in template for m in TOOL_MARKERS),
        thinking=chats and any(m in template for m in THINKING_MARKERS),
        vision=chats and "vision_config" in config, chat_template=chats and bool(template),
        **_pulled_fields(plan, directory))


def _pulled_fields(plan: PullPlan, directory: Path) -> dict:
    return {"dir": str(directory), "files": tuple(f.path for f in plan.files), "repo": plan.repo,
            "revision": plan.revision, "quant": plan.quant, "catalog": plan.catalog, "options": dict(plan.options)}


def _json_of(directory: Path, name: str, plan: PullPlan) -> dict:
    if not any(f.path == name for f in plan.files):
        return {}
    try:
        value = json.loads((directory / name).read_bytes())
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot index {plan.name}: {name} is not readable JSON ({exc})") from None
    return value if isinstance(value, dict) else {}


def _chat_template(directory: Path, plan: PullPlan) -> str:
    """The template text, from chat_template.jinja or tokenizer_config.json (a string, or a list of named ones)."""
    if any(f.path == "chat_template.jinja" for f in plan.files):
        return (directory / "chat_template.jinja").read_text(errors="replace")
    template = _json_of(directory, "tokenizer_config.json", plan).get("chat_template") or ""
    if isinstance(template, list):
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return str(template)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _layout(entry: ModelEntry) -> list[tuple[Path, str]]:
    """Every file of `entry` (absolute) with its path relative to the entry's directory: the listed files, and the
    model file and projector, which entries written before directories (or outside the store) name alone."""
    base = Path(entry.dir) if entry.dir else None
    out = {str(base / f): f for f in entry.files} if base else {}
    for path in (entry.path, entry.mmproj):
        if path and path not in out and path != entry.dir:
            out[path] = Path(path).name if base is None or not Path(path).is_relative_to(base) \
                else str(Path(path).relative_to(base))
    return [(Path(path), relative) for path, relative in out.items()]


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _is_blob_of(paths: Paths, source: Path, sha256: str) -> bool:
    """An uploaded blob is kept under the digest its bytes were checked against as they streamed in
    (POST /api/blobs): its name vouches for the hash; a digest claimed for any other file does not."""
    return bool(sha256) and source.parent == paths.blobs and source.name == f"sha256-{sha256}"


def _projector_name(mmproj: Path) -> str:
    """Its own name in the model's directory, never the model file's."""
    return mmproj.name if mmproj.name.startswith("mmproj") else f"mmproj-{mmproj.name}"


def entry_for(name: str, path: Path, info: GGUFInfo, sha256: str, source: str, *,
              mmproj: Path | None = None, projector: GGUFInfo | None = None) -> ModelEntry:
    """The entry of a GGUF file (and its projector), both in the file's directory."""
    can = capabilities_of(info, projector)
    files = (path.name,) + ((_relative(mmproj, path.parent),) if mmproj else ())
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
        dir=str(path.parent),
        files=files,
    )


def _relative(path: Path, base: Path) -> str:
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
