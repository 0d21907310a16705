"""A real llama-server that dies of SIGILL the first time it starts without --no-repack.

Stands in for a build whose repacked kernels use instructions the CPU advertises
but the kernel traps (AMX on some virtual machines: DESIGN.md, "CPU features").
Everything else is the real engine, exec'd unchanged.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

WRAPPER = """#!{python}
import os, signal, sys
if "--no-repack" not in sys.argv[1:]:
    os.kill(os.getpid(), signal.SIGILL)  # what the trapped instruction does to the real engine
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def write_sigill_engine(directory: Path, real_server: str) -> Path:
    path = directory / "llama-server"
    path.write_text(WRAPPER.format(python=sys.executable, real=real_server))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path
