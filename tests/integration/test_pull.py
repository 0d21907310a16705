"""Pulls end to end: a real LMForge (gateway, manager, downloader) pulling from the local Hub.

Each test publishes its own repo (so the hub's byte counts and faults are its own) holding two quants of a
tiny chat GGUF, padded past the downloader's 1 MiB write size so that a pause or a cut mid-file leaves bytes
in the .part. Faults come from the hub: a cut connection, a flipped byte, a stalled body, a hostile listing.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import ollama
import pytest

from manager.config import Paths
from tests.support import tiny_models
from tests.support.hub import LocalHub
from tests.support.instance import Instance, clean_up, wait_until
from tests.support.pulls import (PULL_TIMEOUT_S, hub_instance, in_background, part_of, parts, pull, pulls, quant_dir,
                                 snapshot, sse_events)

PAD = 2 * 1024 * 1024  # trailing bytes after the tensors; llama.cpp ignores them
Q4, Q8 = "tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("hub-weights")
    return {name: tiny_models.write_chat_model(out / name, seed=seed).read_bytes() + b"\0" * PAD
            for seed, name in enumerate((Q4, Q8))}


@pytest.fixture
def publish(hub: LocalHub, weights: dict[str, bytes], request: pytest.FixtureRequest) -> Callable[[], str]:
    """Publish this test's repo: two GGUF quants, a README and a config; returns the repo id."""
    def publish() -> str:
        repo = "tester/" + request.node.name.removeprefix("test_").replace("_", "-")[:60]
        hub.add_repo(repo, {**weights, "README.md": b"# Tiny\n", "config.json": b'{"model_type": "llama"}'})
        return repo
    return publish


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


def chat(inst: Instance, model: str) -> dict:
    code, body = inst.post("/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert code == 200, body
    assert isinstance(body, dict) and len(body["choices"]) == 1
    return body


def error_text(data: dict) -> str:
    err = data["error"]
    return (err["message"] if isinstance(err, dict) else str(err)).lower()


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
    """An 8 MiB tmpfs to hold an LMForge home. Root mounts it; anyone else mounts it in a user and mount namespace
    of its own (`unshare -Urm`), held open by a process there, and reaches it through that process's
    /proc/<pid>/root: the path works for the test and for the LMForge it starts alike."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        try:
            yield mount
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        return
    if shutil.which("unshare") is None:
        pytest.skip("a tmpfs needs root, or util-linux's unshare for a user namespace; neither is here")
    script = 'mount -t tmpfs -o size=8m tmpfs "$1" && echo mounted && exec cat'  # cat: holds it until stdin ends
    holder = subprocess.Popen(["unshare", "-Urm", "sh", "-c", script, "sh", str(mount)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert holder.stdin is not None and holder.stdout is not None
    if holder.stdout.readline().strip() != b"mounted":
        holder.kill()
        reason = holder.communicate()[1].decode().strip()
        pytest.skip(f"not root, and `unshare -Urm` cannot mount a tmpfs here (user namespaces off?): {reason}")
    try:
        yield Path(f"/proc/{holder.pid}/root") / mount.relative_to("/")
    finally:
        holder.stdin.close()
        holder.wait(10)


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
        part = part_of(home, repo, "Q4_K_M", Q4, weights[Q4])  # what came before the pause is on disk before the fill
        wait_until(lambda: part.exists() and part.stat().st_size == pause.offset, timeout=10,
                   what=f"the .part to hold the {pause.offset} bytes sent before the pause")
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
    part = part_of(inst.home, repo, "Q4_K_M", Q4, weights[Q4])
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
    assert f"{repo}:Q4_K_M" in [m.model for m in client.list().models], "listed under its name without hf.co/"
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


def test_small_files_behind_a_relative_redirect_arrive(inst: Instance, hub: LocalHub,
                                                       weights: dict[str, bytes]) -> None:
    """huggingface.co answers a file kept in git (not LFS) with a 307 to a path on itself, relative to the URL."""
    repo = "tester/Relative-Redirects"
    config, tokenizer = b'{"model_type": "llama"}', b'{"version": "1.0", "model": {}}'
    hub.add_repo(repo, {"model.safetensors": weights[Q4], "config.json": config, "tokenizer.json": tokenizer})
    hub.relative_redirects = True
    _, end, data = pull(inst, repo)
    assert end == "done", data
    stored = quant_dir(inst.home, repo, "all")
    assert (stored / "config.json").read_bytes() == config and (stored / "tokenizer.json").read_bytes() == tokenizer
    assert (stored / "model.safetensors").read_bytes() == weights[Q4]
    cached = sorted(r.path for r in hub.requests if r.path.startswith("/api/resolve-cache/models/"))
    commit = hub.commit(repo)
    assert cached == [f"/api/resolve-cache/models/{repo}/{commit}/{p}" for p in ("config.json", "tokenizer.json")]
