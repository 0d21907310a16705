"""LMForge never outlives itself: programs whose supervisord was killed stop on their own, with their engines,
and `lmforge stop` / `lmforge start` find this home's processes that run without supervisord."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from manager.config import Paths
from tests.support.instance import Instance, llama_servers_of, wait_until

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
MODULES = {"manager": "manager", "prober": "prober", "catalog": "downloader", "gateway": "gateway"}

# Stops through its SIGTERM handler, which notes that it ran; its parent is whoever started it.
WATCHER = """\
import pathlib, signal, sys
from manager.startup import watch_parent
def on_term(*_):
    pathlib.Path(sys.argv[1]).write_text("sigterm")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
watch_parent(interval_s=0.05)
print("watching", flush=True)
signal.pause()  # live until signalled: the parent's death brings the SIGTERM
"""
PARENT = "import signal, subprocess, sys; subprocess.Popen(sys.argv[1:]); signal.pause()"  # until killed


def processes_of(home: Path) -> list[psutil.Process]:
    """Every live process of this home (supervisord, programs, engines); an unreaped zombie is gone."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["environ", "status"]):
        env = proc.info["environ"] or {}
        if env.get("LMFORGE_HOME") == str(home) and proc.pid != os.getpid():
            found[proc.pid] = proc
    found.update({proc.pid: proc for proc in llama_servers_of(home)})
    return [p for p in found.values() if _alive(p)]


def programs_of(home: Path) -> dict[str, list[psutil.Process]]:
    programs: dict[str, list[psutil.Process]] = {}
    for proc in processes_of(home):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "-m" in cmd and cmd.index("-m") + 1 < len(cmd) and cmd[cmd.index("-m") + 1] in MODULES:
            programs.setdefault(MODULES[cmd[cmd.index("-m") + 1]], []).append(proc)
    return programs


def _alive_pid(pid: int) -> bool:
    try:
        return _alive(psutil.Process(pid))
    except psutil.Error:
        return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def inst(make_instance, models_dir: Path) -> Iterator[Instance]:
    inst = make_instance(models={"chat": models_dir / "chat.gguf"})
    yield inst
    inst.lmforge("stop")
    for proc in processes_of(inst.home):  # nothing of ours may outlive a test
        proc.kill()


def test_a_program_whose_parent_dies_stops_through_its_sigterm_path(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, sys.executable, "-c", WATCHER, str(marker)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "watching\n"
        [child] = psutil.Process(parent.pid).children()
        parent.kill()
        parent.wait()
        wait_until(marker.exists, timeout=10, what="the orphaned child's SIGTERM handler")
        wait_until(lambda: not _alive(child), timeout=10, what="the orphaned child to exit")
    finally:
        parent.kill()
        parent.wait()


def test_a_killed_supervisord_takes_every_program_and_engine_with_it(inst: Instance) -> None:
    started = inst.lmforge("start")
    assert started.returncode == 0, started.stderr
    assert inst.post("/v1/chat/completions", CHAT)[0] == 200
    assert llama_servers_of(inst.home)
    assert sorted(programs_of(inst.home)) == ["downloader", "gateway", "manager", "prober"]

    os.kill(int((inst.home / "supervisord.pid").read_text()), signal.SIGKILL)
    wait_until(lambda: not processes_of(inst.home), timeout=10, what="every program and engine to exit")


def test_a_manager_killed_with_its_supervisord_leaves_no_engine(inst: Instance) -> None:
    """Both gone at once: no one restarts the manager, so the other programs stop its engines."""
    started = inst.lmforge("start")
    assert started.returncode == 0, started.stderr
    assert inst.post("/v1/chat/completions", CHAT)[0] == 200
    engines = llama_servers_of(inst.home)
    assert engines
    os.kill(int((inst.home / "supervisord.pid").read_text()), signal.SIGKILL)
    for manager in programs_of(inst.home)["manager"]:
        manager.kill()  # before its own watch notices supervisord is gone
    wait_until(lambda: not processes_of(inst.home), timeout=10, what="every program and engine to exit")


def test_stop_without_supervisord_stops_every_program_and_engine(inst: Instance) -> None:
    inst.start()
    assert inst.post("/v1/chat/completions", CHAT)[0] == 200
    engines = inst.engine_pids()
    assert engines

    stopped = inst.lmforge("stop")
    assert stopped.returncode == 0, stopped.stderr
    for name in ("manager", "prober", "downloader", "gateway", *(f"engine {pid}" for pid in engines)):
        assert name in stopped.stdout
    assert "LMForge stopped" in stopped.stdout
    # Each program left through its graceful path, which for the manager stops its engine.
    assert {name: proc.wait(5) for name, proc in inst.procs.items()} == dict.fromkeys(inst.procs, 0)
    assert "SIGKILL" not in stopped.stdout
    assert processes_of(inst.home) == []
    assert not Paths(inst.home).runtime.exists()


def test_start_stops_this_homes_orphans_first_and_runs_one_set(inst: Instance) -> None:
    inst.start("manager", "prober", "gateway")  # the manager loads nothing before a hardware snapshot
    code, body = inst.post("/v1/chat/completions", CHAT)
    assert code == 200, body
    [engine] = inst.engine_pids()

    started = inst.lmforge("start")
    assert started.returncode == 0, started.stderr
    assert "stopping them first" in started.stderr
    assert all(proc.wait(5) == 0 for proc in inst.procs.values())
    assert not _alive_pid(engine)

    supervisor = int((inst.home / "supervisord.pid").read_text())
    programs = programs_of(inst.home)
    assert sorted(programs) == ["downloader", "gateway", "manager", "prober"]
    assert all(len(procs) == 1 and procs[0].ppid() == supervisor for procs in programs.values())
    assert inst.post("/v1/chat/completions", CHAT)[0] == 200
