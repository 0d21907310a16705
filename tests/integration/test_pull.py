"""Pulls end to end: a real LMForge (gateway, manager, downloader) pulling from the local Hub.

Each test publishes its own repo (so the hub's byte counts and faults are its own) holding two quants of a
tiny chat GGUF, padded past the downloader's 1 MiB write size so that a pause or a cut mid-file leaves bytes
in the .part. Faults come from the hub: a cut connection, a flipped byte, a stalled body, a hostile listing.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import ollama
import pytest

from manager.config import Paths
from tests.support import tiny_models
from tests.support.hub import LocalHub, running_hub
from tests.support.instance import Instance, clean_up, prepare_instance, wait_until

PAD = 2 * 1024 * 1024  # trailing bytes after the tensors; llama.cpp ignores them
Q4, Q8 = "tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"
PULL_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("hub-weights")
    return {name: tiny_models.write_chat_model(out / name, seed=seed).read_bytes() + b"\0" * PAD
            for seed, name in enumerate((Q4, Q8))}


@pytest.fixture(scope="module")
def module_hub() -> Iterator[LocalHub]:
    with running_hub() as hub:
        yield hub


@pytest.fixture
def hub(module_hub: LocalHub) -> Iterator[LocalHub]:
    yield module_hub
    module_hub.clear_faults()


@pytest.fixture
def publish(hub: LocalHub, weights: dict[str, bytes], request: pytest.FixtureRequest) -> Callable[[], str]:
    """Publish this test's repo: two GGUF quants, a README and a config; returns the repo id."""
    def publish() -> str:
        repo = "tester/" + request.node.name.removeprefix("test_").replace("_", "-")[:60]
        hub.add_repo(repo, {**weights, "README.md": b"# Tiny\n", "config.json": b'{"model_type": "llama"}'})
        return repo
    return publish


def hub_instance(home: Path, llama_server: str, hub: LocalHub, config: str = "") -> Instance:
    """An LMForge, not started yet, whose Hugging Face is the local hub."""
    inst = prepare_instance(home, llama_server, {}, config)
    inst.env["HF_ENDPOINT"] = hub.url
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        inst.env.pop(name, None)
    return inst


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, llama_server: str, module_hub: LocalHub) -> Iterator[Instance]:
    """One LMForge for every test that needs no config or disk of its own: each start costs seconds. The tests
    pull from repos of their own, so they do not see each other's models or files."""
    inst = hub_instance(tmp_path_factory.mktemp("pull") / "home", llama_server, module_hub)
    try:
        yield inst.start()
    finally:
        clean_up(inst)


@pytest.fixture
def inst(shared: Instance, hub: LocalHub) -> Instance:
    return shared


@pytest.fixture
def start(home: Path, llama_server: str, hub: LocalHub) -> Iterator[Callable[..., Instance]]:
    """Start an LMForge of the test's own, with `config`, in `at` (default: the test's home)."""
    made: list[Instance] = []

    def start(config: str = "", at: Path | None = None) -> Instance:
        made.append(hub_instance(at or home, llama_server, hub, config))
        return made[-1].start()

    yield start
    for inst in made:
        clean_up(inst)


# --- the clients ---


def sse_events(resp: Iterator[bytes]) -> Iterator[tuple[str | None, dict]]:
    """(event name, data) from an SSE body as it arrives."""
    event = None
    for raw in resp:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            yield event, json.loads(line[5:])
            event = None


def pull(inst: Instance, model: str, keep: bool = False) -> tuple[list[dict], str, dict]:
    """POST /lf/model/pull and read its SSE to the end: (download events, "done" or "error", its data)."""
    body = json.dumps({"model": model, "keep": keep}).encode()
    req = urllib.request.Request(inst.url + "/lf/model/pull", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    progress: list[dict] = []
    try:
        with urllib.request.urlopen(req, timeout=PULL_TIMEOUT_S) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            for event, data in sse_events(resp):
                if event == "download":
                    progress.append(data)
                elif event in ("done", "error"):
                    return progress, event, data
    except urllib.error.HTTPError as err:
        return progress, "error", json.loads(err.read())
    raise AssertionError(f"the pull of {model} ended without a done or error event; saw {progress[-1:]}")


def in_background(fn: Callable, *args: object) -> concurrent.futures.Future:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def chat(inst: Instance, model: str) -> dict:
    code, body = inst.post("/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert code == 200, body
    assert isinstance(body, dict) and len(body["choices"]) == 1
    return body


def pulls(inst: Instance) -> list[dict]:
    return inst.status()["pulls"]


def error_text(data: dict) -> str:
    err = data["error"]
    return (err["message"] if isinstance(err, dict) else str(err)).lower()


# --- the store ---


def quant_dir(home: Path, repo: str, quant: str) -> Path:
    owner, name = repo.split("/")
    return Paths(home).models / "hf" / f"{owner}--{name}" / quant


def part_of(home: Path, repo: str, quant: str, path: str) -> Path:
    owner, name = repo.split("/")
    return Paths(home).downloads / "hf" / f"{owner}--{name}" / quant / f"{path}.part"


def snapshot(home: Path) -> tuple[bytes | None, list[tuple[str, int]]]:
    """The index file's bytes and every file of the models directory, to compare before and after."""
    paths = Paths(home)
    index = paths.index.read_bytes() if paths.index.exists() else None
    files = sorted((str(p.relative_to(paths.models)), p.stat().st_size)
                   for p in paths.models.rglob("*") if p.is_file()) if paths.models.exists() else []
    return index, files


def parts(home: Path, repo: str) -> list[Path]:
    """The repo's .part files in the staging area."""
    owner, name = repo.split("/")
    staged = Paths(home).downloads / "hf" / f"{owner}--{name}"
    return sorted(staged.rglob("*.part")) if staged.exists() else []


# --- the tests ---


def test_pull_completes_then_the_model_chats(inst: Instance, publish, hub: LocalHub,
                                             weights: dict[str, bytes]) -> None:
    repo = publish()
    name = f"{repo}:Q4_K_M"
    progress, end, data = pull(inst, name)
    assert end == "done", data
    entry = data["model"]
    assert entry["name"] == name and entry["quant"] == "Q4_K_M" and entry["repo"] == repo
    assert (quant_dir(inst.home, repo, "Q4_K_M") / Q4).read_bytes() == weights[Q4]
    assert hub.bytes_served(f"{repo}/{Q8}") == 0, "only the quant asked for is fetched"
    assert parts(inst.home, repo) == []
    assert name in [m["name"] for m in inst.get("/lf/model/list")[1]["models"]]  # type: ignore[index]
    chat(inst, name)
    last = progress[-1]
    assert last["state"] == "done" and last["done_bytes"] == last["total_bytes"] == len(weights[Q4])
    assert all(p["done_bytes"] <= p["total_bytes"] for p in progress if p["total_bytes"])
    assert [(f["path"], f["size"], f["done"]) for f in last["files"]] == [(Q4, len(weights[Q4]), len(weights[Q4]))], \
        "the finished pull lists its files as done"


def test_cut_connection_resumes_from_the_cut(inst: Instance, publish, hub: LocalHub,
                                             weights: dict[str, bytes]) -> None:
    repo = publish()
    size = len(weights[Q4])
    cut = size // 2
    hub.cut_once(f"{repo}/{Q4}", cut)
    _, end, data = pull(inst, f"{repo}:Q4_K_M")  # the downloader retries within the pull
    assert end == "done", data
    assert hub.ranges(f"{repo}/{Q4}") == [None, f"bytes={cut}-"]
    assert hub.bytes_served(f"{repo}/{Q4}") == size, "bytes before the cut were fetched again"
    assert (quant_dir(inst.home, repo, "Q4_K_M") / Q4).read_bytes() == weights[Q4]


def test_corrupt_byte_is_caught_and_the_part_deleted(inst: Instance, publish, hub: LocalHub) -> None:
    repo = publish()
    hub.corrupt(f"{repo}/{Q4}", 1000)
    before = snapshot(inst.home)
    _, end, data = pull(inst, f"{repo}:Q4_K_M")
    assert end == "error"
    assert "sha256 mismatch" in error_text(data) and Q4.lower() in error_text(data)
    assert hub.bytes_served(f"{repo}/{Q4}") > 0, "it was fetched, then refused"
    assert parts(inst.home, repo) == []
    assert snapshot(inst.home) == before
    assert pulls(inst)[-1]["state"] == "failed"


def test_pull_larger_than_free_disk_is_refused_before_a_byte(start, publish, hub: LocalHub, home: Path) -> None:
    repo = publish()
    inst = start("disk_reserve_mb = 1000000000\n")  # a reserve no disk can keep free
    before = snapshot(home)
    _, end, data = pull(inst, f"{repo}:Q4_K_M")
    assert end == "error"
    assert "free" in error_text(data) and "reserve" in error_text(data)
    assert hub.ranges(f"{repo}/{Q4}") == [] and hub.bytes_served(f"{repo}/{Q4}") == 0
    assert snapshot(home) == before and parts(home, repo) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs to hold an LMForge home (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(ballast: Path, leave: int) -> None:
    """Fill the disk that holds `ballast` to the brim, then give back `leave` bytes."""
    with open(ballast, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        f.truncate(max(0, f.tell() - leave))


def test_disk_full_mid_file_leaves_store_and_index(small_disk: Path, start, publish, hub: LocalHub,
                                                   weights: dict[str, bytes]) -> None:
    # small_disk comes first so that it is torn down last, after the instance on it has stopped
    repo = publish()
    home = small_disk / "home"
    inst = start("disk_reserve_mb = 0\n", at=home)
    before = snapshot(home)
    pause = hub.pause_at(f"{repo}/{Q4}", len(weights[Q4]) // 2)
    running = in_background(pull, inst, f"{repo}:Q4_K_M")
    ballast = small_disk / "ballast"
    try:
        assert pause.reached.wait(30), "the download never reached the pause"
        fill(ballast, leave=64 * 1024)  # room for the logs, none for the rest of the file
        pause.set()
        _, end, data = running.result(PULL_TIMEOUT_S)
    finally:
        pause.set()
        ballast.unlink(missing_ok=True)
    assert end == "error"
    assert "disk full" in error_text(data)
    assert snapshot(home) == before
    assert parts(home, repo) == []


def test_two_different_pulls_run_at_once(inst: Instance, publish, hub: LocalHub) -> None:
    repo = publish()
    pauses = [hub.pause_at(f"{repo}/{path}", 1536 * 1024) for path in (Q4, Q8)]
    running = [in_background(pull, inst, f"{repo}:{quant}") for quant in ("Q4_K_M", "Q8_0")]
    try:
        for pause in pauses:  # both stalled mid-body at once: neither waited for the other
            assert pause.reached.wait(30), "the two pulls did not download at the same time"
    finally:
        for pause in pauses:
            pause.set()
    results = [r.result(PULL_TIMEOUT_S) for r in running]
    assert [end for _, end, _ in results] == ["done", "done"], results
    assert (quant_dir(inst.home, repo, "Q4_K_M") / Q4).exists() and (quant_dir(inst.home, repo, "Q8_0") / Q8).exists()


def test_the_same_pull_twice_shares_one_download(inst: Instance, publish, hub: LocalHub,
                                                 weights: dict[str, bytes]) -> None:
    repo = publish()
    pause = hub.pause_at(f"{repo}/{Q4}", 1536 * 1024)
    first = in_background(pull, inst, f"{repo}:Q4_K_M")
    try:
        assert pause.reached.wait(30)
        second = in_background(pull, inst, f"hf.co/{repo}:Q4_K_M")
        wait_until(lambda: any(p["followers"] == 2 for p in pulls(inst)), timeout=10, what="the second pull to join")
    finally:
        pause.set()
    assert first.result(PULL_TIMEOUT_S)[1] == "done"
    assert second.result(PULL_TIMEOUT_S)[1] == "done"
    assert hub.ranges(f"{repo}/{Q4}") == [None]
    assert hub.bytes_served(f"{repo}/{Q4}") == len(weights[Q4])


def test_cancel_keeps_the_part_and_the_next_pull_resumes(inst: Instance, publish, hub: LocalHub,
                                                         weights: dict[str, bytes]) -> None:
    repo = publish()
    name = f"{repo}:Q4_K_M"
    before = snapshot(inst.home)
    pause = hub.pause_at(f"{repo}/{Q4}", 1536 * 1024)
    running = in_background(pull, inst, name, True)
    part = part_of(inst.home, repo, "Q4_K_M", Q4)
    try:
        assert pause.reached.wait(30)
        wait_until(lambda: part.exists() and part.stat().st_size >= 1024 * 1024, timeout=10,
                   what="the first MiB in the .part")
        code, body = inst.request("DELETE", "/lf/model/pull/" + name)
        assert code == 200 and body["status"] == "cancelled", body  # type: ignore[index]
        _, end, data = running.result(PULL_TIMEOUT_S)
    finally:
        pause.set()
    assert end == "error" and "cancel" in error_text(data)
    assert pulls(inst)[-1]["state"] == "cancelled"
    assert snapshot(inst.home) == before
    kept = part.stat().st_size
    assert kept >= 1024 * 1024
    served = hub.bytes_served(f"{repo}/{Q4}")
    assert inst.request("DELETE", "/lf/model/pull/" + name)[0] == 404, "no pull of it runs any more"

    _, end, data = pull(inst, name)
    assert end == "done", data
    assert hub.ranges(f"{repo}/{Q4}")[-1] == f"bytes={kept}-"
    assert hub.bytes_served(f"{repo}/{Q4}") - served == len(weights[Q4]) - kept
    assert (quant_dir(inst.home, repo, "Q4_K_M") / Q4).read_bytes() == weights[Q4]


def test_a_listing_that_escapes_the_store_is_refused(inst: Instance, hub: LocalHub,
                                                     weights: dict[str, bytes]) -> None:
    repo = "tester/Escape"
    hub.add_repo(repo, {"README.md": b"# Escape\n"})
    sha = hashlib.sha256(weights[Q4]).hexdigest()
    hub.list_bogus(repo, "../../x", len(weights[Q4]), sha)
    hub.list_bogus(repo, "../../tiny-Q4_K_M.gguf", len(weights[Q4]), sha)
    before = snapshot(inst.home)
    _, end, data = pull(inst, f"{repo}:Q4_K_M")
    assert end == "error"
    assert "../../" in error_text(data) and "unsafe" in error_text(data), data
    paths = Paths(inst.home)
    assert not [p for p in inst.home.parent.rglob("*") if p.name in {"x", "x.part"}]
    assert not (paths.models / "hf" / Q4).exists() and not (paths.downloads / "hf" / f"{Q4}.part").exists()
    assert snapshot(inst.home) == before and parts(inst.home, repo) == []
    assert not [r for r in hub.requests if "/resolve/" in r.path and "Escape" in r.path]


def test_ollama_client_pull_reports_progress(inst: Instance, publish, weights: dict[str, bytes]) -> None:
    repo = publish()
    client = ollama.Client(host=inst.url, timeout=PULL_TIMEOUT_S)
    steps = list(client.pull(f"hf.co/{repo}:Q4_K_M", stream=True))
    statuses = [s.status for s in steps]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert all(s.completed is None or s.total is None or s.completed <= s.total for s in steps)
    assert f"hf.co/{repo}:Q4_K_M" in [m.model for m in client.list().models]
    files = [s for s in steps if s.digest]
    assert files and all(s.digest.startswith("sha256:") for s in files), f"no per-file progress in {statuses}"
    assert any(s.total == len(weights[Q4]) and s.completed == s.total for s in files)


def test_deleting_one_quant_keeps_the_other(inst: Instance, publish) -> None:
    repo = publish()
    for quant in ("Q4_K_M", "Q8_0"):
        assert pull(inst, f"{repo}:{quant}")[1] == "done"
    chat(inst, f"{repo}:Q4_K_M")  # loaded: delete must unload it first
    code, body = inst.request("DELETE", "/api/delete", {"model": f"{repo}:Q4_K_M"})
    assert code == 200, body
    assert not quant_dir(inst.home, repo, "Q4_K_M").exists()
    assert (quant_dir(inst.home, repo, "Q8_0") / Q8).exists()
    names = [m["name"] for m in inst.get("/lf/model/list")[1]["models"]]  # type: ignore[index]
    assert f"{repo}:Q4_K_M" not in names and f"{repo}:Q8_0" in names
    chat(inst, f"{repo}:Q8_0")


def test_status_stream_carries_the_pull(inst: Instance, publish) -> None:
    repo = publish()
    name = f"{repo}:Q4_K_M"
    subscribed = threading.Event()

    def watch() -> dict:
        with urllib.request.urlopen(inst.url + "/lf/status/stream", timeout=PULL_TIMEOUT_S) as resp:
            for event, data in sse_events(resp):
                subscribed.set()  # the snapshot came: every later event reaches this stream
                if event == "download" and data["pull"]["model"] == name and data["pull"]["state"] == "done":
                    return data
        raise AssertionError("the status stream ended")

    watching = in_background(watch)
    assert subscribed.wait(10), "no snapshot on /lf/status/stream"
    assert pull(inst, name)[1] == "done"
    seen = watching.result(PULL_TIMEOUT_S)
    assert seen["pull"]["repo"] == repo and seen["entry"]["name"] == name


def test_unknown_repo_fails_with_the_hub_name(inst: Instance) -> None:
    _, end, data = pull(inst, "nobody/Nothing-GGUF:Q4_K_M")
    assert end == "error"
    assert "nobody/nothing-gguf" in error_text(data)
