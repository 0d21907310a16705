"""Where a pull's files may go, and the small file-system steps of moving them: every path a plan names must stay
inside downloads/ and models/, whatever the Hub listed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from manager.protocol import PullFile


class PullFailed(Exception):
    """A pull that cannot go on; the message is for the user, `status` the HTTP status that fits it."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


def inside(path: Path, root: Path) -> Path:
    """`path`, when it stays strictly inside `root` once `..` and symlinks are resolved; PullFailed otherwise."""
    resolved, top = path.resolve(), root.resolve()
    if not resolved.is_relative_to(top) or resolved == top:
        raise PullFailed(f"refusing to write {path}: it is not inside {root}")
    return path


def hash_tag(f: PullFile) -> str:
    """The start of the hash a file is checked against, for its staged name (hex only, whatever the Hub sent)."""
    return re.sub(r"[^0-9a-f]", "", (f.sha256 or f.sha1).lower())[:16] or "unhashed"


def prune(directory: Path, root: Path) -> None:
    """Remove `directory` and its parents up to `root` while they are empty."""
    top = root.resolve()
    while directory.resolve() != top and directory.resolve().is_relative_to(top):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def size_text(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
