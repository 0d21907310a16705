"""A real llama-server behind a wrapper that, for a model named on cue, first loads slowly or stops mid-load.

- A model named "stall..." stands in for a model on a dead NFS mount: the engine starts loading
  (it logs llama-server's first line about the model and its memory grows, as weights paging in would),
  then its reads block for good: no more output, no more memory, no CPU, and /health never answers.
- A model named "crawl..." stands in for a large model on a slow disk: for `crawl_s` seconds it
  keeps logging and growing, a little at a time, then the real engine loads it.

Every other model goes to the real engine, exec'd unchanged. The name is read from the model's directory in
the store (the whole path holds the test's own name).
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

WRAPPER = """#!{python}
import os, sys, threading, time
model = sys.argv[sys.argv.index("--model") + 1]
name = os.path.basename(os.path.dirname(model))
held = []
def read_weights(seconds, every):
    # Pages of weights coming in: resident memory grows, and the engine says a little now and then.
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        held.append(bytearray(8 * 1024 * 1024))  # zero-filled: every page touched
        print(f"load_tensors: {{len(held) * 8}} MiB read", flush=True)
        time.sleep(every)  # the stand-in for a disk's pace
if name.startswith(("stall", "crawl")):
    print(f"0.00.001.000 I srv    load_model: loading model '{{model}}'", flush=True)
if name.startswith("stall"):
    read_weights(0.5, 0.1)
    threading.Event().wait()  # the read that never returns
if name.startswith("crawl"):
    read_weights({crawl_s}, 0.2)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def write_stalling_engine(directory: Path, real_server: str, crawl_s: float = 4.0) -> Path:
    path = directory / "llama-server"
    path.write_text(WRAPPER.format(python=sys.executable, crawl_s=crawl_s, real=real_server))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path
