"""Pulls for end-to-end tests: an LMForge whose Hub is the local one, clients that read /lf/model/pull's SSE to its
end, and looks at the store and its staging area.

Stdlib only and synchronous, so that a test can run a pull in a thread while it stalls or kills a part.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import urllib.error
import urllib.request
from typing import Callable, Iterable, Iterator

from pathlib import Path

from manager.config import Paths
from tests.support.hub import LocalHub
from tests.support.instance import Instance, prepare_instance

PULL_TIMEOUT_S = 60


def sse_events(lines: Iterable[bytes]) -> Iterator[tuple[str | None, dict]]:
    """(event name, data) from an SSE body as it arrives."""
    event = None
    for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            yield event, json.loads(line[5:])
            event = None


def pull(inst: Instance, model: str, keep: bool = False,
         timeout: float = PULL_TIMEOUT_S) -> tuple[list[dict], str, dict]:
    """POST /lf/model/pull and read its SSE to the end: (download events, "done" or "error", its data)."""
    body = json.dumps({"model": model, "keep": keep}).encode()
    req = urllib.request.Request(inst.url + "/lf/model/pull", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    progress: list[dict] = []
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            for event, data in sse_events(resp):
                if event == "download":
                    progress.append(data)
                elif event in ("done", "error"):
                    return progress, event, data
    except urllib.error.HTTPError as err:
        return progress, "error", json.loads(err.read())
    raise AssertionError(f"the pull of {model} ended without a done or error event; saw {progress[-1:]}")


def pulls(inst: Instance) -> list[dict]:
    """The manager's pulls, as /lf/status lists them."""
    return inst.status()["pulls"]


def pull_state(inst: Instance, model: str) -> str | None:
    """The state of the latest pull of `model` the manager lists (None: none listed)."""
    return next((p["state"] for p in reversed(pulls(inst)) if p["model"] == model), None)


def in_background(fn: Callable, *args: object, **kwargs: object) -> concurrent.futures.Future:
    """Run `fn` in a thread of its own; the test reads its result (or its exception) from the future."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


def hub_instance(home: Path, llama_server: str, hub: LocalHub, config: str = "") -> Instance:
    """An LMForge, not started yet, whose Hugging Face is the local hub."""
    inst = prepare_instance(home, llama_server, {}, config)
    inst.env["HF_ENDPOINT"] = hub.url
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        inst.env.pop(name, None)
    return inst


def quant_dir(home: Path, repo: str, quant: str) -> Path:
    owner, name = repo.split("/")
    return Paths(home).models / "hf" / f"{owner}--{name}" / quant


def part_of(home: Path, repo: str, quant: str, path: str, content: bytes) -> Path:
    """Where the downloader stages `path` of an LFS file holding `content`: named for the start of its sha256."""
    owner, name = repo.split("/")
    tag = hashlib.sha256(content).hexdigest()[:16]
    return Paths(home).downloads / "hf" / f"{owner}--{name}" / quant / f"{path}.{tag}.part"


def snapshot(home: Path) -> tuple[bytes | None, list[tuple[str, int]]]:
    """The index file's bytes and every file of the models directory but its staging area (parts() looks there),
    to compare before and after."""
    paths = Paths(home)
    index = paths.index.read_bytes() if paths.index.exists() else None
    files = sorted((str(p.relative_to(paths.models)), p.stat().st_size) for p in paths.models.rglob("*")
                   if p.is_file() and not p.is_relative_to(paths.downloads)) if paths.models.exists() else []
    return index, files


def parts(home: Path, repo: str) -> list[Path]:
    """The repo's .part files in the staging area."""
    owner, name = repo.split("/")
    staged = Paths(home).downloads / "hf" / f"{owner}--{name}"
    return sorted(staged.rglob("*.part")) if staged.exists() else []


def add_shortcut(home: Path, name: str, repo: str, file: str, size: int) -> None:
    """A user catalog file in `home` that makes `name` a shortcut for one GGUF quant of a local-hub repo."""
    (home / "catalog").mkdir(parents=True, exist_ok=True)
    (home / "catalog" / "tiny.toml").write_text(f"""
[[model]]
name = "{name}"
kind = "chat"
description = "a tiny chat model on the local hub"
capabilities = ["chat"]
context_length = 2048
default_quant = "Q4_K_M"
[model.gguf]
repo = "{repo}"
quants.Q4_K_M = {{ file = "{file}", size_bytes = {size} }}
""")
