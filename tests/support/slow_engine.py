"""A real llama-server that starts late when it serves a model whose name holds "slow".

Stands in for a large model's multi-second load, which the tiny test models (ready
in ~30 ms) do not have. Everything else is the real engine, exec'd unchanged.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from tests.support.instance import wait_until

WRAPPER = """#!{python}
import os, sys, time
alias = sys.argv[sys.argv.index("--alias") + 1] if "--alias" in sys.argv else ""
if "slow" in alias:  # the model's name, not any argument: a test's temporary paths may hold the word
    gate = {gate!r}
    if gate:
        with open(gate, "rb") as cue:  # a FIFO: the load lasts until the test writes to it and closes it
            cue.read()
    else:
        time.sleep({delay})  # wait: the stand-in for a long weight load
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def write_slow_engine(directory: Path, real_server: str, delay_s: float = 3.0, gate: Path | None = None) -> Path:
    """With `gate`, the load lasts until `release(gate)`, however long the test takes; else `delay_s`."""
    if gate is not None:
        os.mkfifo(gate)
    path = directory / "llama-server"
    path.write_text(WRAPPER.format(python=sys.executable, delay=delay_s, real=real_server,
                                   gate=str(gate) if gate else ""))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def release(gate: Path, timeout: float = 30.0) -> None:
    """End the gated load: once the engine waits at its read of the FIFO, opening it and closing it ends the
    read. Opening without a reader fails (ENXIO) until the engine is there; one that never comes fails the test."""
    def opened() -> int | None:
        try:
            return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            return None
    os.close(wait_until(opened, timeout=timeout, what="the gated engine at its read"))
