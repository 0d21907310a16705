"""The store's file operations: atomic writes, hard-linked placement, hashing, and the checks on paths.

Nothing here touches the index; catalog/store.py decides which files an entry names and when they go.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from catalog.index_file import StoreError


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


@contextlib.contextmanager
def placed(files: list[tuple[Path, Path]]) -> Iterator[None]:
    """Place each (source, target); a refused import or copy leaves no file and no directory it created."""
    created: list[Path] = []
    try:
        for source, target in files:
            for path in reversed((target, *target.parents)):
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` so that a reader sees the old file or the new one, whole, and a crash leaves one
    of them: a temporary file beside it (`mode`, else mkstemp's 0600), fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
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


def existing_file(path: Path) -> Path:
    path = path.expanduser().absolute()
    if not path.is_file():
        raise StoreError(f"{path} does not exist or is not a file")
    return path


def is_inside(path: Path, root: Path) -> bool:
    """`path`, resolved, lies strictly below `root` (resolved): never `root` itself, never out through `..`."""
    resolved, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return resolved != top and resolved.is_relative_to(top)


def inside(root: Path, relative: str, what: str) -> Path:
    """`root/relative`, refused unless it is a plain relative path that stays below `root`."""
    if (not relative or relative.startswith("/") or "\\" in relative or ".." in Path(relative).parts
            or any(ord(c) < 32 for c in relative) or not is_inside(root / relative, root)):
        raise StoreError(f"{what} {relative!r} is not a path inside {root}")
    return root / relative


def remove_tree(directory: Path, top: Path) -> None:
    """Delete `directory`, then each parent left empty, up to (never including) `top`."""
    shutil.rmtree(directory, ignore_errors=True)
    prune_empty(directory.parent, top)


def prune_empty(directory: Path, top: Path) -> None:
    while is_inside(directory, top):
        try:
            directory.rmdir()  # only when empty
        except OSError:
            return
        directory = directory.parent
