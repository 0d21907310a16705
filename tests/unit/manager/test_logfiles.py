"""Copy-truncate rotation: backups shift and drop, and a writer holding O_APPEND keeps writing at the start."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from manager.logfiles import backup_path, rotate_if_large
from tests.support.instance import wait_until


def test_a_small_file_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_bytes(b"x" * 99)
    assert rotate_if_large(log, max_bytes=100, backups=3) is False
    assert log.read_bytes() == b"x" * 99 and not backup_path(log, 1).exists()


def test_a_missing_file_is_not_an_error(tmp_path: Path) -> None:
    assert rotate_if_large(tmp_path / "absent.log", max_bytes=1, backups=3) is False
    assert list(tmp_path.iterdir()) == []


def test_a_large_file_moves_to_dot_one_and_the_live_file_is_emptied(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_bytes(b"line\n" * 40)
    inode = log.stat().st_ino
    assert rotate_if_large(log, max_bytes=100, backups=3) is True
    assert backup_path(log, 1).read_bytes() == b"line\n" * 40
    assert log.read_bytes() == b"" and log.stat().st_ino == inode  # truncated in place, not replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.log", "engine.log.1"]


def test_backups_shift_and_the_oldest_is_dropped(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    for generation in range(5):
        log.write_bytes(f"generation {generation}\n".encode() * 10)
        assert rotate_if_large(log, max_bytes=10, backups=3)
    kept = {n: backup_path(log, n).read_text().splitlines()[0] for n in (1, 2, 3)}
    assert kept == {1: "generation 4", 2: "generation 3", 3: "generation 2"}
    assert not backup_path(log, 4).exists()


def test_a_line_caught_mid_write_is_cut_from_the_backup_not_torn(tmp_path: Path) -> None:
    """Seen: the copy reached the end inside a write crossing a page, and the backup ended with half a line."""
    log = tmp_path / "engine.log"
    log.write_bytes(b"first line\n" * 10 + b"second li")  # the engine's write, as a reader may see part of it
    assert rotate_if_large(log, max_bytes=64, backups=1)
    assert backup_path(log, 1).read_bytes() == b"first line\n" * 10
    assert log.read_bytes() == b""


def test_a_log_without_a_newline_is_kept_whole(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_bytes(b"x" * 100)
    assert rotate_if_large(log, max_bytes=64, backups=1)
    assert backup_path(log, 1).read_bytes() == b"x" * 100


def test_no_backups_means_the_live_file_is_only_truncated(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_bytes(b"y" * 200)
    assert rotate_if_large(log, max_bytes=100, backups=0) is True
    assert log.read_bytes() == b"" and sorted(p.name for p in tmp_path.iterdir()) == ["engine.log"]


def test_rotations_from_many_threads_at_once_rotate_once(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_bytes(b"z" * 1000)
    results: list[bool] = []
    start = threading.Barrier(8)

    def rotate() -> None:
        start.wait()
        results.append(rotate_if_large(log, max_bytes=100, backups=3))

    threads = [threading.Thread(target=rotate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert backup_path(log, 1).read_bytes() == b"z" * 1000 and not backup_path(log, 2).exists()


# Opens the log once with O_APPEND, as an engine's stdout is, then writes a
# burst of numbered lines (one write(2) each) for every count read on stdin,
# and answers "ok" when the burst is on disk.
BURST_WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
seq = 0
for request in sys.stdin:
    for _ in range(int(request)):
        os.write(fd, b"line %08d\\n" % seq)
        seq += 1
    print("ok", flush=True)
"""
LINE = len(b"line 00000000\n")


def test_a_writer_holding_the_file_open_continues_at_the_start_of_the_live_file(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    child = subprocess.Popen([sys.executable, "-c", BURST_WRITER, str(log)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        def burst(n: int) -> None:
            child.stdin.write(f"{n}\n")
            child.stdin.flush()
            assert child.stdout.readline() == "ok\n"

        burst(1000)
        assert rotate_if_large(log, max_bytes=1000 * LINE, backups=2)
        burst(10)
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    live = log.read_bytes()
    assert log.stat().st_size == 10 * LINE  # no hole: the writes went to offset 0, not to the old end
    assert b"\0" not in live
    assert live.splitlines()[0] == b"line 00001000"
    assert backup_path(log, 1).read_bytes().splitlines()[-1] == b"line 00000999"


# Writes numbered lines as fast as it can until the stop file appears.
STREAM_WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
seq = 0
while not os.path.exists(sys.argv[2]):
    os.write(fd, b"line %08d\\n" % seq)
    seq += 1
"""


def test_rotating_under_a_busy_writer_leaves_whole_lines_in_order(tmp_path: Path) -> None:
    log, stop = tmp_path / "engine.log", tmp_path / "stop"
    child = subprocess.Popen([sys.executable, "-c", STREAM_WRITER, str(log), str(stop)])
    try:
        wait_until(lambda: log.exists() and log.stat().st_size > 64 * 1024, what="the writer to fill the log")
        assert rotate_if_large(log, max_bytes=64 * 1024, backups=1)
        rotated_size = backup_path(log, 1).stat().st_size
        wait_until(lambda: log.stat().st_size > 10 * LINE, what="the writer to write after the rotation")
    finally:
        stop.touch()
        child.wait(timeout=10)
    live = log.read_bytes()
    assert b"\0" not in live  # a hole left by a rename-and-keep-writing would read as NULs
    live_seqs = [int(line.split()[1]) for line in live.splitlines()]
    old_seqs = [int(line.split()[1]) for line in backup_path(log, 1).read_bytes().splitlines()]
    assert len(old_seqs) * LINE == rotated_size >= 64 * 1024
    assert old_seqs == list(range(len(old_seqs)))
    # Lines written between the copy and the truncate may be lost, never reordered or torn.
    assert live_seqs == list(range(live_seqs[0], live_seqs[0] + len(live_seqs)))
    assert live_seqs[0] > old_seqs[-1]
