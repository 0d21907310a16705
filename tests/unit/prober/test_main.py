"""`python -m prober`: --once prints a decodable snapshot; SIGTERM/SIGINT stop it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from manager.protocol import HardwareSnapshot

ROOT = Path(__file__).parents[3]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "LMFORGE_HOME": str(home), "PYTHONPATH": str(ROOT)}


def test_once_prints_this_machines_snapshot_as_json(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "prober", "--once"],
        capture_output=True, env=_env(tmp_path), cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    snapshot = msgspec.json.decode(done.stdout, type=HardwareSnapshot)
    assert snapshot.os == "linux" and snapshot.ram_total > 0 and snapshot.cpu_threads >= 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_signal_stops_a_prober_waiting_for_its_manager(tmp_path, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "prober"],
        stderr=subprocess.PIPE, text=True, env=_env(tmp_path), cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        # The hardware line comes after the signal handlers are installed.
        for line in proc.stderr:
            if "hardware:" in line:
                break
        proc.send_signal(sig)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert f"[shutdown] prober: {sig.name} received, stopping" in rest
    assert "[shutdown] prober: stopped" in rest
