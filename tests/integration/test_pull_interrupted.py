"""Pulls whose processes die mid-file, and a staging area that someone has tampered with.

A kill -9 leaves a .part behind and no one to say so: the next pull must take it up with a Range request
rather than fetch it all again, and whatever the staging area holds (a planted symlink) must not lead a write
outside of it.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Callable, Iterator

import pytest

from manager.config import Paths
from tests.support import tiny_models
from tests.support.hub import LocalHub
from tests.support.instance import Instance, clean_up, wait_until
from tests.support.pulls import PULL_TIMEOUT_S, hub_instance, in_background, part_of, parts, pull, quant_dir

Q4 = "tiny-Q4_K_M.gguf"
PAD = 2 * 1024 * 1024  # past the downloader's 1 MiB writes, so that a stall leaves whole writes in the .part
PAUSE_AT = 1536 * 1024


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return tiny_models.write_chat_model(tmp_path_factory.mktemp("weights") / Q4).read_bytes() + b"\0" * PAD


@pytest.fixture
def start(home: Path, llama_server: str, hub: LocalHub) -> Iterator[Callable[[], Instance]]:
    made: list[Instance] = []

    def start() -> Instance:
        made.append(hub_instance(home, llama_server, hub))
        return made[-1].start()

    yield start
    for inst in made:
        clean_up(inst)


def stalled_mid_file(inst: Instance, hub: LocalHub, repo: str, weights: bytes):  # type: ignore[no-untyped-def]
    """Start a pull of `repo`'s Q4 and return (its future, the hub's pause) once PAUSE_AT bytes are in the .part."""
    pause = hub.pause_at(f"{repo}/{Q4}", PAUSE_AT)
    running = in_background(pull, inst, f"{repo}:Q4_K_M")
    part = part_of(inst.home, repo, "Q4_K_M", Q4, weights)
    assert pause.reached.wait(30), "the download never reached the pause"
    wait_until(lambda: part.exists() and part.stat().st_size == PAUSE_AT, timeout=10,
               what=f"the .part to hold the {PAUSE_AT} bytes sent before the pause")
    return running, pause


def test_a_manager_killed_mid_file_leaves_a_part_the_next_pull_resumes(start, hub: LocalHub, weights: bytes) -> None:
    repo = "tester/Manager-Killed"
    hub.add_repo(repo, {Q4: weights})
    name = f"{repo}:Q4_K_M"
    inst = start()
    first, pause = stalled_mid_file(inst, hub, repo, weights)
    inst.stop("manager", sig=signal.SIGKILL)
    inst.start("manager")
    # The restarted manager knows no such pull: it answers the downloader's next report with a cancel.
    wait_until(lambda: re.search(rf"pull \w+ of {re.escape(name)}: cancelled", inst.log("downloader")),
               timeout=20, what="the downloader to drop the job the old manager gave it")
    pause.set()
    _, end, data = first.result(PULL_TIMEOUT_S)
    assert end == "error", "the manager that ran the pull is gone: its stream cannot end done"
    assert part_of(inst.home, repo, "Q4_K_M", Q4, weights).stat().st_size == PAUSE_AT, "the cancel kept the .part"

    _, end, data = pull(inst, name)
    assert end == "done", data
    assert hub.ranges(f"{repo}/{Q4}") == [None, f"bytes={PAUSE_AT}-"]
    assert (quant_dir(inst.home, repo, "Q4_K_M") / Q4).read_bytes() == weights
    assert parts(inst.home, repo) == []


def test_a_downloader_killed_mid_file_resumes_once_restarted(start, hub: LocalHub, weights: bytes) -> None:
    repo = "tester/Downloader-Killed"
    hub.add_repo(repo, {Q4: weights})
    name = f"{repo}:Q4_K_M"
    inst = start()
    first, pause = stalled_mid_file(inst, hub, repo, weights)
    inst.stop("downloader", sig=signal.SIGKILL)
    pause.set()  # the connection it held is gone; the hub may finish with it
    inst.start("downloader")

    # The manager gives up on a pull whose downloader went silent (or hands it to the new one): either way it ends.
    assert first.result(PULL_TIMEOUT_S)[1] in ("done", "error")
    _, end, data = pull(inst, name)
    assert end == "done", data
    assert hub.ranges(f"{repo}/{Q4}") == [None, f"bytes={PAUSE_AT}-"], "the new downloader took up the .part"
    assert hub.bytes_served(f"{repo}/{Q4}") == len(weights), "no byte was fetched twice"
    assert (quant_dir(inst.home, repo, "Q4_K_M") / Q4).read_bytes() == weights


@pytest.mark.parametrize("planted", ["part", "directory"])
def test_a_symlink_planted_in_staging_leads_no_write_outside(start, hub: LocalHub, weights: bytes, home: Path,
                                                             tmp_path: Path, planted: str) -> None:
    repo = f"tester/Planted-{planted}"
    hub.add_repo(repo, {Q4: weights})
    victim_dir = tmp_path / "elsewhere"
    victim_dir.mkdir()
    victim = victim_dir / "precious"
    victim.write_bytes(b"not yours")
    part = part_of(home, repo, "Q4_K_M", Q4, weights)
    if planted == "part":
        part.parent.mkdir(parents=True)
        part.symlink_to(victim)
    else:
        part.parent.parent.mkdir(parents=True)
        part.parent.symlink_to(victim_dir, target_is_directory=True)
    inst = start()

    _, end, data = pull(inst, f"{repo}:Q4_K_M")
    assert victim.read_bytes() == b"not yours", "the pull wrote through the symlink"
    assert sorted(p.name for p in victim_dir.iterdir()) == ["precious"], "the pull wrote outside the staging area"
    assert end == "error" and "refusing to write" in data["error"]["message"], data
    assert not (quant_dir(home, repo, "Q4_K_M") / Q4).exists()
    assert Paths(home).downloads.is_dir() and not Paths(home).downloads.is_symlink()
