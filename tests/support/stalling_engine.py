"""A real llama-server behind a wrapper that, for a model named on cue, first loads slowly or stops mid-load.

- A model named "stall..." stands in for a model on a dead NFS mount: the engine starts loading
  (it logs llama-server's first line about the model and its memory grows, as weights paging in would),
  then its reads block for good: no more output, no more memory, no CPU, and /health never answers.
- A model named "crawl..." stands in for a large model whose load works for long, as llama.cpp does
  repacking its weights for the CPU: for `crawl_s` seconds it computes over them, growing and logging as it
  goes, then the real engine loads it.

Every other model goes to the real engine, exec'd unchanged. The name is read from the model's directory in
the store (the whole path holds the test's own name).
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

WRAPPER = """#!{python}
import hashlib, os, sys, threading, time
model = sys.argv[sys.argv.index("--model") + 1]
name = os.path.basename(os.path.dirname(model))
held = []
def take_weights():
    # Pages of weights coming in: resident memory grows, and the engine says so.
    held.append(bytearray(8 * 1024 * 1024))  # zero-filled: every page touched
    print(f"load_tensors: {{len(held) * 8}} MiB read", flush=True)
if name.startswith(("stall", "crawl")):
    print(f"0.00.001.000 I srv    load_model: loading model '{{model}}'", flush=True)
if name.startswith("stall"):
    for _ in range(6):
        take_weights()
    threading.Event().wait()  # the read that never returns
if name.startswith("crawl"):
    end, done = time.monotonic() + {crawl_s}, 0
    while time.monotonic() < end:  # busy: CPU time and output are its signs of life
        if len(held) < 8:
            take_weights()
        hashlib.sha256(held[done % len(held)]).digest()  # one tensor repacked
        done += 1
        if done % 16 == 0:
            print(f"repack: {{done}} tensors", flush=True)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def write_stalling_engine(directory: Path, real_server: str, crawl_s: float = 4.0) -> Path:
    path = directory / "llama-server"
    path.write_text(WRAPPER.format(python=sys.executable, crawl_s=crawl_s, real=real_server))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path
