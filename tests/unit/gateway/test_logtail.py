"""Reading the logs: the list, names that cannot lead out of the logs directory, tails within their cap, and a
follower that keeps up with partial lines and with both rotation schemes (copy-truncate and rename)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from gateway.logtail import (
    LINE_MAX_BYTES,
    READ_MAX_BYTES,
    LogFollower,
    list_logs,
    open_log,
    read_tail,
    tail,
    valid_name,
)
from manager.logfiles import rotate_if_large

HOSTILE = ["", ".", "..", "../manager", "..%2fmanager", "a/b", "/etc/passwd", "a\x00b", "manager\x00", ".hidden",
           "-rf", "x" * 201, "manager/../manager", "é", "a b", "a\\b", "a\nb"]


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    directory = tmp_path / "home" / "logs"
    directory.mkdir(parents=True)
    return directory


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


@pytest.fixture
def follow(logs: Path) -> Iterator:
    """A follower of logs/<name>.log from its current end, closed afterwards."""
    made: list[LogFollower] = []

    def make(name: str) -> LogFollower:
        follower = LogFollower.open(logs, name)
        assert follower is not None
        made.append(follower)
        return follower

    yield make
    for follower in made:
        follower.close()


def test_the_list_has_processes_then_engines_by_name_with_backups_counted_not_listed(logs: Path) -> None:
    for file in ("gateway.log", "manager.log", "engine-b-chat.log", "engine-a_7b-embed.log", "supervisord.log"):
        (logs / file).write_bytes(b"x" * len(file))
    for backup in ("manager.log.1", "manager.log.2", "engine-b-chat.log.1"):
        (logs / backup).write_bytes(b"old\n")
    (logs / ".manager.log.rotating").write_bytes(b"")  # logfiles.py's scratch copy
    (logs / "notes.txt").write_bytes(b"")
    (logs / "dir.log").mkdir()
    (logs / "link.log").symlink_to(logs / "manager.log")
    listed = list_logs(logs)
    assert [(log.name, log.kind) for log in listed] == [
        ("gateway", "process"), ("manager", "process"), ("supervisord", "process"),
        ("engine-a_7b-embed", "engine"), ("engine-b-chat", "engine")]
    manager = listed[1]
    assert (manager.file, manager.size_bytes, manager.backups) == ("manager.log", len("manager.log"), 2)
    assert manager.modified_at == pytest.approx((logs / "manager.log").stat().st_mtime)
    assert listed[-1].backups == 1 and listed[0].backups == 0


def test_a_home_without_logs_lists_none(tmp_path: Path) -> None:
    assert list_logs(tmp_path / "missing") == []


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_before_the_filesystem_is_touched(name: str, logs: Path) -> None:
    (logs / "manager.log").write_bytes(b"line\n")
    assert not valid_name(name)
    assert open_log(logs / "nonexistent-dir-never-read", name) is None
    assert read_tail(logs, name, 10) is None and LogFollower.open(logs, name) is None


def test_only_regular_files_inside_the_logs_directory_open(logs: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.log"
    secret.write_bytes(b"password\n")
    (logs / "outside.log").symlink_to(secret)
    (logs / "inside.log").symlink_to(logs / "manager.log")
    (logs / "manager.log").write_bytes(b"line\n")
    (logs / "dir.log").mkdir()
    os.mkfifo(logs / "fifo.log")  # opening a FIFO for reading would wait for a writer
    for name in ("outside", "inside", "dir", "fifo", "missing", "manager.log"):
        assert open_log(logs, name) is None, name
    fd = open_log(logs, "manager")
    assert fd is not None
    os.close(fd)


def test_a_tail_is_the_last_lines_and_keeps_a_last_line_without_its_newline(logs: Path) -> None:
    path = logs / "manager.log"
    path.write_bytes(b"".join(b"line %d\r\n" % n for n in range(10)) + b"partial")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert tail(fd, 3) == ["line 8", "line 9", "partial"]
        assert tail(fd, 100)[:2] == ["line 0", "line 1"] and len(tail(fd, 100)) == 11
        assert tail(fd, 2, end=len(b"line 0\r\nline 1\r\n")) == ["line 0", "line 1"]
    finally:
        os.close(fd)


def test_a_tail_reads_no_further_back_than_its_cap_and_drops_the_line_the_cap_cuts(logs: Path) -> None:
    path = logs / "manager.log"
    path.write_bytes(b"a" * 100 + b"\n" + b"".join(b"%09d\n" % n for n in range(10)))  # lines of 10 bytes
    fd = os.open(path, os.O_RDONLY)
    try:
        assert tail(fd, 1000, max_bytes=25) == ["000000008", "000000009"]  # 000000007 was cut: left out
        assert tail(fd, 1000, max_bytes=30) == ["000000007", "000000008", "000000009"]  # whole, not cut
        assert len(tail(fd, 1000)) == 11  # within the 2 MiB default: everything
        assert tail(fd, 1000, end=50, max_bytes=5) == ["aaaaa"]  # no newline in the window: a piece of a line
    finally:
        os.close(fd)
    huge = logs / "huge.log"
    huge.write_bytes(b"".join(b"%09d\n" % n for n in range(300_000)))  # 3 MB
    fd = os.open(huge, os.O_RDONLY)
    try:
        lines = tail(fd, 5000 * 100)
        assert lines[-1] == "000299999" and len(lines) == 2 * 1024 * 1024 // 10  # whole lines of the last 2 MiB
    finally:
        os.close(fd)


def test_a_follower_sees_appended_lines_and_holds_a_partial_line_until_its_newline(logs: Path, follow) -> None:
    path = logs / "manager.log"
    path.write_bytes(b"first\nbefore\n")
    follower = follow("manager")
    append(path, b"after opening\n")
    assert follower.backlog(5) == ["first", "before"]  # up to where following starts, whatever came since
    assert follower.poll() == ["after opening"]
    assert follower.poll() == []
    append(path, b"one\ntw")
    assert follower.poll() == ["one"]
    append(path, b"o\n")
    assert follower.poll() == ["two"]
    append(path, "ünï\n".encode() + b"\xff\n")
    assert follower.poll() == ["ünï", "\ufffd"]


def test_a_follower_continues_from_the_start_after_a_copy_truncate_rotation(logs: Path, follow) -> None:
    path = logs / "engine-a-chat.log"
    path.write_bytes(b"x" * 200 + b"\n")
    follower = follow("engine-a-chat")
    append(path, b"last before\nhalf")
    assert follower.poll() == ["last before"]
    assert rotate_if_large(path, 100, backups=2)  # manager/logfiles.py, as the manager rotates engine logs
    assert path.stat().st_size == 0 and (logs / "engine-a-chat.log.1").exists()
    append(path, b"first after\n")
    assert follower.poll() == ["half", "first after"]  # the rest of a cut line is not coming
    assert follower.following


def test_a_follower_reads_the_renamed_file_to_its_end_then_the_new_one(logs: Path, follow) -> None:
    path = logs / "supervisord.log"
    path.write_bytes(b"old\n")
    follower = follow("supervisord")
    append(path, b"written before the rename\n")
    path.rename(logs / "supervisord.log.1")  # supervisord's own rotation
    assert follower.poll() == ["written before the rename"]  # the name leads nowhere yet: still the old file
    append(logs / "supervisord.log.1", b"late write to the old file\n")
    path.write_bytes(b"first in the new file\n")
    assert follower.poll() == ["late write to the old file", "first in the new file"]
    append(path, b"second\n")
    assert follower.poll() == ["second"]


def test_a_follower_stops_when_its_name_becomes_a_link(logs: Path, tmp_path: Path, follow) -> None:
    path = logs / "manager.log"
    path.write_bytes(b"")
    follower = follow("manager")
    (tmp_path / "elsewhere").write_bytes(b"secret\n")
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    assert follower.poll() == [] and not follower.following


def test_a_follower_reads_a_flood_in_bounded_steps_and_cuts_an_endless_line(logs: Path, follow) -> None:
    path = logs / "manager.log"
    path.write_bytes(b"")
    follower = follow("manager")
    append(path, b"y" * (LINE_MAX_BYTES - 1) + b"\n" + b"z" * (READ_MAX_BYTES + LINE_MAX_BYTES))
    first = follower.poll()
    assert follower.behind and first[0] == "y" * (LINE_MAX_BYTES - 1) and len(first) > 1
    rest = follower.poll()
    assert not follower.behind
    assert len("".join(first[1:] + rest)) == READ_MAX_BYTES + LINE_MAX_BYTES
    assert all(len(line) <= LINE_MAX_BYTES for line in first + rest)
