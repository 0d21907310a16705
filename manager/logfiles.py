"""Size-based rotation of log files that other processes keep open for appending.

Owns the rotation scheme: `<name>` is live, `<name>.1` the newest backup, `<name>.<backups>` the oldest.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("lmforge.logfiles")

# One lock per path: rotations of the same log from two threads would shift
# the same backups twice. Different logs rotate independently.
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()
COPY_CHUNK = 1024 * 1024


def rotate_if_large(path: Path, max_bytes: int, backups: int) -> bool:
    """Rotate `path` when it has reached `max_bytes`; True when it was rotated.

    Copy-truncate, not rename: an engine writes its log through an O_APPEND
    descriptor it opened at spawn and never reopens, so a renamed file would
    keep growing under the backup's name. Truncating in place sends the
    engine's next write to offset 0 (O_APPEND always writes at the current
    end), so the live file holds no sparse hole. Lines written between the
    copy and the truncate are lost; the window is one read of the file's tail.

    Safe from any thread. Never raises: a missing file is not rotated, and
    any other OS error is logged and reported as "not rotated", because a log
    that cannot rotate must not take down the process that asked.
    """
    path = Path(path)
    if not _size_at_least(path, max_bytes):
        return False
    with _lock_for(path):
        try:
            # Another thread may have rotated it while this one waited.
            if not _size_at_least(path, max_bytes):
                return False
            _copy_truncate(path, backups)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("could not rotate %s: %s", path, exc)
            return False


def backup_path(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _size_at_least(path: Path, max_bytes: int) -> bool:
    try:
        return path.stat().st_size >= max_bytes
    except OSError:
        return False


def _lock_for(path: Path) -> threading.Lock:
    key = path.absolute()
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _copy_truncate(path: Path, backups: int) -> None:
    if backups <= 0:
        os.truncate(path, 0)
        return
    tmp = path.with_name(f".{path.name}.rotating")
    try:
        with path.open("rb") as src, tmp.open("wb") as dst:
            whole = _copy_whole_lines(src, dst)
            # Truncate right after the copy reaches the end, before the
            # backups shift: that keeps the window for lost lines short.
            os.truncate(path, 0)
            dst.truncate(whole)
        _shift_backups(path, backups)
        os.replace(tmp, backup_path(path, 1))
    finally:
        tmp.unlink(missing_ok=True)


def _copy_whole_lines(src: BinaryIO, dst: BinaryIO) -> int:
    """Copy `src` to its end; the length that ends with its last whole line (all of it when it has no newline).

    A reader may see part of a write that the engine is making at that moment:
    Linux grows a file page by page within one write, so a copy that reaches the
    end there ends mid-line. That line is cut from the backup; the engine's
    whole write lands in the live file before the truncate (which waits for it)
    and is lost with it, as any line written between the copy and the truncate.
    """
    copied = whole = 0
    while chunk := src.read(COPY_CHUNK):
        dst.write(chunk)
        if (newline := chunk.rfind(b"\n")) >= 0:
            whole = copied + newline + 1
        copied += len(chunk)
    return whole or copied


def _shift_backups(path: Path, backups: int) -> None:
    """`.k` -> `.k+1` from the oldest down, so `.backups` (the oldest) is overwritten and dropped."""
    for n in range(backups - 1, 0, -1):
        try:
            os.replace(backup_path(path, n), backup_path(path, n + 1))
        except FileNotFoundError:
            continue
