"""Reading LMForge's own logs for /lf/logs: which logs there are, a safe way to open one by name, the tail of
one, and a follower that sees the lines appended to it across both rotation schemes.

Everything here blocks on the filesystem: the handlers call it in a worker thread.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from manager.config import ENGINE_LOG_PREFIX

SUFFIX = ".log"
# A log's name is its file's name less SUFFIX. One path component that starts with a letter or digit: no
# separator, no NUL, never "." or "..", so a name that passes cannot lead out of the logs directory.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
BACKUP = re.compile(r"(?P<file>.+)\.(?P<n>[0-9]+)")
TAIL_MAX_BYTES = 2 * 1024 * 1024  # a tail reads no further back than this
READ_MAX_BYTES = 1024 * 1024  # a follower reads at most this much per poll, so a flood cannot starve the rest
LINE_MAX_BYTES = 64 * 1024  # a line without its newline is held up to this, then sent as it is
CHUNK = 64 * 1024


@dataclass(frozen=True)
class LogInfo:
    name: str
    kind: str  # "process" (supervisord and its programs) or "engine"
    file: str
    size_bytes: int
    modified_at: float
    backups: int

    @property
    def order(self) -> tuple[bool, str]:
        return (self.kind == "engine", self.name)


def valid_name(name: str) -> bool:
    """Whether `name` may name a log at all; checked before the filesystem is touched."""
    return NAME.fullmatch(name) is not None


def list_logs(directory: Path) -> list[LogInfo]:
    """Every log in `directory`, processes first, then engines, each by name; backups (`x.log.1`) are counted
    with their log, not listed. Symbolic links and anything but regular files are left out."""
    backups: dict[str, int] = {}
    found: list[tuple[str, os.stat_result]] = []
    try:
        with os.scandir(directory) as listing:
            entries = list(listing)
    except FileNotFoundError:
        return []
    for entry in entries:
        if (backup := BACKUP.fullmatch(entry.name)) is not None and backup["file"].endswith(SUFFIX):
            backups[backup["file"]] = backups.get(backup["file"], 0) + 1
            continue
        name = entry.name.removesuffix(SUFFIX)
        if name == entry.name or not valid_name(name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            found.append((entry.name, entry.stat(follow_symlinks=False)))
        except FileNotFoundError:  # rotated away between the listing and the stat
            continue
    logs = [LogInfo(name=file.removesuffix(SUFFIX), kind="engine" if file.startswith(ENGINE_LOG_PREFIX) else "process",
                    file=file, size_bytes=st.st_size, modified_at=st.st_mtime, backups=backups.get(file, 0))
            for file, st in found]
    return sorted(logs, key=lambda log: log.order)


def open_log(directory: Path, name: str) -> int | None:
    """A read-only descriptor on the log `name` in `directory`, or None when there is no such log: an invalid
    name, no file, or something other than a regular file there (a symbolic link, a FIFO, a directory)."""
    if not valid_name(name):
        return None
    path = directory / f"{name}{SUFFIX}"
    try:
        # O_NOFOLLOW: a link swapped in after any check is still refused; O_NONBLOCK: a FIFO does not hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # ENOENT, ELOOP (a link), EACCES, ...
        return None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        inside = path.resolve().parent == directory.resolve()
    except OSError:
        regular = inside = False
    if regular and inside:
        return fd
    os.close(fd)
    return None


def tail(fd: int, lines: int, end: int | None = None, max_bytes: int = TAIL_MAX_BYTES) -> list[str]:
    """The last `lines` lines before offset `end` (the file's size when None), from its last `max_bytes` at most.
    A line cut by that window is left out; a window without any newline is one piece of a very long line."""
    if end is None:
        end = os.fstat(fd).st_size
    start = max(0, end - max_bytes)
    # One byte more, before the window: whether the window starts a line or cuts one.
    data = _pread_all(fd, max(0, start - 1), end)
    if start > 0:
        newline = data.find(b"\n")
        data = data[newline + 1:] if newline >= 0 else data[1:]
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()  # the file ends with a newline: nothing after it
    return [decode(part) for part in parts[-lines:]] if lines > 0 else []


def read_tail(directory: Path, name: str, lines: int, max_bytes: int = TAIL_MAX_BYTES) -> list[str] | None:
    """The last `lines` lines of the log `name`; None when there is no such log (see open_log)."""
    fd = open_log(directory, name)
    if fd is None:
        return None
    try:
        return tail(fd, lines, max_bytes=max_bytes)
    finally:
        os.close(fd)


def decode(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", errors="replace")


def _pread_all(fd: int, start: int, end: int) -> bytes:
    chunks = []
    while start < end and (chunk := os.pread(fd, min(CHUNK, end - start), start)):
        chunks.append(chunk)
        start += len(chunk)
    return b"".join(chunks)


class LogFollower:
    """The lines appended to one log since it was opened, poll by poll (every method blocks: call it in a thread).

    Both rotation schemes are followed. Copy-truncate (manager/logfiles.py, engine logs): the file shrinks under
    the descriptor, so reading starts again at 0. A truncate that the file outgrows again between two polls goes
    unseen, as with `tail -F`; the rotation threshold is megabytes, a poll interval a fraction of a second.
    Rename (supervisord's own logs): the name points at a new file, so the old one is read to its end first,
    then the new one from its start. A line whose newline has not been written yet is held until it is, or
    until the file is rotated (the rest of it is not coming), or until it reaches LINE_MAX_BYTES.
    """

    def __init__(self, directory: Path, name: str, fd: int) -> None:
        self.directory, self.name = directory, name
        self._fd: int | None = fd
        self._start = self._offset = os.fstat(fd).st_size  # following starts at the end
        self._partial = b""
        self.behind = False  # the last poll stopped at READ_MAX_BYTES: poll again without waiting
        # A handler cancelled while its poll runs in a thread closes the follower from the loop: the descriptor
        # must not be closed (and its number reused by another open) under a read.
        self._lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path, name: str) -> LogFollower | None:
        """A follower of the log `name` from its current end; None when there is no such log (see open_log)."""
        fd = open_log(directory, name)
        return None if fd is None else cls(directory, name, fd)

    def backlog(self, lines: int) -> list[str]:
        """The last `lines` lines before where following starts: together, no line is missed or repeated."""
        with self._lock:
            return tail(self._fd, lines, end=self._start) if self._fd is not None else []

    @property
    def following(self) -> bool:
        """False once the name leads to something that is not a log any more (a link, a directory)."""
        return self._fd is not None

    def poll(self) -> list[str]:
        with self._lock:
            return self._poll() if self._fd is not None else []

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _poll(self) -> list[str]:
        assert self._fd is not None
        # Looked at before the read: a writer that renames does so after its last write to the old file, so
        # reading the old file after seeing the new name gets all of it.
        replaced = self._replaced()
        lines = self._read()
        if replaced and not self.behind:
            lines += self._flush_partial()
            os.close(self._fd)
            self._fd, self._offset = open_log(self.directory, self.name), 0
            if self._fd is not None:
                lines += self._read()
        return lines

    def _read(self) -> list[str]:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        lines: list[str] = []
        if size < self._offset:  # copy-truncate: the writer starts again at 0
            lines += self._flush_partial()
            self._offset = 0
        end = min(size, self._offset + READ_MAX_BYTES)
        self.behind = end < size
        data = self._partial + _pread_all(self._fd, self._offset, end)
        self._offset = end
        *complete, self._partial = data.split(b"\n")
        lines += [decode(line) for line in complete]
        while len(self._partial) >= LINE_MAX_BYTES:
            lines.append(decode(self._partial[:LINE_MAX_BYTES]))
            self._partial = self._partial[LINE_MAX_BYTES:]
        return lines

    def _flush_partial(self) -> list[str]:
        partial, self._partial = self._partial, b""
        return [decode(partial)] if partial else []

    def _replaced(self) -> bool:
        """Whether the log's name now leads to another file (renamed away, and a new one made in its place).
        While the name leads nowhere (between the rename and the new file), the old file is still followed."""
        assert self._fd is not None
        try:
            now = os.lstat(self.directory / f"{self.name}{SUFFIX}")
        except FileNotFoundError:
            return False
        held = os.fstat(self._fd)
        return (now.st_ino, now.st_dev) != (held.st_ino, held.st_dev)
