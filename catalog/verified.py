"""The verified manifest of a pulled model's directory: each file the downloader moved there, with the size and hash
it was checked against on the way in.

A file's size alone does not say it is the file a plan lists (uploaders re-upload a fixed file at the same size), so
a file counts as present only when the manifest records the plan's size and hash for it. This is the downloader's
own note, not the index (the manager writes that): a dot-file, which the store never indexes or lists.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

from catalog.store_files import write_atomic
from manager.protocol import PullFile

NAME = ".verified.json"
# Moves into the store and manifest updates, of every job in this process, one at a time: a job that finds a file
# gone from staging then knows whether the job sharing it has moved and recorded it.
LOCK = threading.RLock()


def record_of(f: PullFile) -> dict[str, int | str]:
    if f.sha256 or not f.sha1:
        return {"size": f.size, "sha256": f.sha256.lower()}
    return {"size": f.size, "sha1": f.sha1.lower()}


def read(directory: Path) -> dict[str, object]:
    """The manifest of `directory`; an unreadable one is empty (its files are fetched again, never trusted)."""
    try:
        data = json.loads((directory / NAME).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_verified(directory: Path, f: PullFile, manifest: dict[str, object] | None = None) -> bool:
    """`f` is in `directory` with its size, and the manifest says it was verified against `f`'s hash."""
    try:
        size = (directory / f.path).stat().st_size
    except OSError:
        return False
    return size == f.size and (read(directory) if manifest is None else manifest).get(f.path) == record_of(f)


def update(directory: Path, added: Sequence[PullFile] = (), dropped: Sequence[str] = ()) -> None:
    """Record `added` (just moved in, verified) and forget `dropped` (taken back out), atomically."""
    if not added and not dropped:
        return
    with LOCK:
        manifest = read(directory)
        for f in added:
            manifest[f.path] = record_of(f)
        for path in dropped:
            manifest.pop(path, None)
        if manifest:
            write_atomic(directory / NAME, json.dumps(manifest, indent=1, sort_keys=True).encode())
        else:  # nothing left to vouch for: the directory can go once empty
            (directory / NAME).unlink(missing_ok=True)
