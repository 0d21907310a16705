"""Finding and stopping a home's processes without supervisord, with stand-in programs and engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from deploy import orphans
from manager.config import Paths

# Stands in for `python -m manager` and the others: notes its SIGTERM in a shared file, then exits.
FAKE_MAIN = """\
import os, signal, sys
def on_term(*_):
    with open(os.environ["FAKE_TERMS"], "a") as f:
        f.write(os.environ["FAKE_NAME"] + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("FAKE_IGNORE_TERM") else on_term)
print("ready", flush=True)
while True:
    signal.pause()  # live until signalled, as the real program does
"""


class Fakes:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.terms = root / "terms.txt"
        self.procs: list[subprocess.Popen] = []
        for module in orphans.MODULES:
            (root / module).mkdir(parents=True)
            (root / module / "__main__.py").write_text(FAKE_MAIN)

    def start(self, module: str, home: Path, ignore_term: bool = False) -> subprocess.Popen:
        env = dict(os.environ, LMFORGE_HOME=str(home), FAKE_TERMS=str(self.terms), FAKE_NAME=module)
        if ignore_term:
            env["FAKE_IGNORE_TERM"] = "1"
        # cwd first on sys.path: `-m manager` runs the stand-in, not the real manager.
        proc = subprocess.Popen([sys.executable, "-m", module], cwd=self.root, env=env, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        self.procs.append(proc)
        return proc

    def engine(self, paths: Paths, started: float | None = None) -> subprocess.Popen:
        """A process group recorded as an engine; `started` other than its own makes the record stale."""
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        self.procs.append(proc)
        paths.engine_pids.mkdir(parents=True, exist_ok=True)
        record = {"pid": proc.pid, "argv0": "sleep",
                  "started": psutil.Process(proc.pid).create_time() if started is None else started}
        (paths.engine_pids / f"{proc.pid}.json").write_text(json.dumps(record))
        return proc


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[Fakes]:
    f = Fakes(tmp_path / "fakes")
    yield f
    for proc in f.procs:
        proc.kill()
        proc.wait()


def test_program_name_is_taken_from_python_dash_m_only() -> None:
    assert orphans.program_name(["/venv/bin/python", "-m", "manager"]) == "manager"
    assert orphans.program_name(["python3", "-u", "-m", "catalog"]) == "downloader"
    assert orphans.program_name(["python", "-m", "gateway.cli", "stop"]) is None
    assert orphans.program_name(["/venv/bin/python", "/venv/bin/pytest", "-m", "gateway"]) is None
    assert orphans.program_name(["python", "-m"]) is None
    assert orphans.program_name([]) is None


def test_home_of_reads_lmforge_home_as_the_process_itself_would(tmp_path: Path) -> None:
    assert orphans.home_of({"LMFORGE_HOME": str(tmp_path)}, "/") == str(tmp_path)
    assert orphans.home_of({"LMFORGE_HOME": "h"}, str(tmp_path)) == str(tmp_path / "h")
    assert orphans.home_of({"HOME": str(tmp_path)}, "/") == str(tmp_path / ".lmforge")
    assert orphans.home_of({"HOME": str(tmp_path), "LMFORGE_HOME": "~/x"}, "/") == str(tmp_path / "x")


def test_only_this_homes_programs_are_found(fakes: Fakes, tmp_path: Path) -> None:
    ours = Paths(tmp_path / "ours")
    manager = fakes.start("manager", ours.home)
    gateway = fakes.start("gateway", ours.home)
    fakes.start("gateway", tmp_path / "theirs")
    assert [(f.name, f.pid) for f in orphans.find(ours)] == [("manager", manager.pid), ("gateway", gateway.pid)]


def test_the_manager_is_stopped_before_the_other_programs(fakes: Fakes, tmp_path: Path) -> None:
    paths = Paths(tmp_path / "home")
    for module in ("gateway", "catalog", "manager", "prober"):
        fakes.start(module, paths.home)
    stopped = orphans.stop(paths)
    assert sorted(s.name for s in stopped) == ["downloader", "gateway", "manager", "prober"]
    assert not any(s.killed for s in stopped)
    assert fakes.terms.read_text().splitlines()[0] == "manager"
    assert orphans.find(paths) == []


def test_a_program_that_ignores_sigterm_is_killed_after_its_wait(fakes: Fakes, tmp_path: Path) -> None:
    paths = Paths(tmp_path / "home")
    stubborn = fakes.start("gateway", paths.home, ignore_term=True)
    [stopped] = orphans.stop(paths, program_wait=0.2)
    assert (stopped.name, stopped.pid, stopped.killed) == ("gateway", stubborn.pid, True)
    assert stubborn.wait(5) == -9
    assert "(SIGKILL)" in orphans.describe([stopped])


def test_recorded_engines_are_killed_and_a_recycled_pid_is_left_alone(fakes: Fakes, tmp_path: Path) -> None:
    paths = Paths(tmp_path / "home")
    engine = fakes.engine(paths)
    bystander = fakes.engine(paths, started=1.0)
    assert [f.pid for f in orphans.find(paths)] == [engine.pid]
    [stopped] = orphans.stop(paths)
    assert (stopped.name, stopped.pid, stopped.killed) == ("engine", engine.pid, True)
    assert engine.wait(5) == -9
    assert bystander.poll() is None
    assert list(paths.engine_pids.glob("*.json")) == []


def test_nothing_running_stops_nothing(tmp_path: Path) -> None:
    assert orphans.stop(Paths(tmp_path / "home")) == []
