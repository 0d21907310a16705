"""A real llama-server that starts late when its command line names a "slow" model.

Stands in for a large model's multi-second load, which the tiny test models (ready
in ~30 ms) do not have. Everything else is the real engine, exec'd unchanged.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

WRAPPER = """#!{python}
import os, sys, time
if any("slow" in arg for arg in sys.argv[1:]):
    time.sleep({delay})  # wait: the stand-in for a long weight load
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def write_slow_engine(directory: Path, real_server: str, delay_s: float = 3.0) -> Path:
    path = directory / "llama-server"
    path.write_text(WRAPPER.format(python=sys.executable, delay=delay_s, real=real_server))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path
