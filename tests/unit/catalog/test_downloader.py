"""catalog/inflight.py's shared fetches and catalog/downloader.py's path checks, with real fetches from the local Hub."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import pytest

from catalog.downloader import PullFailed, inside
from catalog.fetch import Cancelled, Source, fetch_file, new_session
from catalog.inflight import INFLIGHT, shared_fetch
from manager.protocol import PullFile
from tests.support.hub import LocalHub, running_hub
from tests.support.instance import wait_until_async

REPO = "owner/Shared-GGUF"
BIG = "model-Q4_K_M.gguf"
DATA = hashlib.sha256(b"shared").digest() * (3 * 1024 * 1024 // 32)


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    with running_hub() as hub:
        hub.add_repo(REPO, {BIG: DATA})
        yield hub


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session() as session:
        yield session


def starter(session: aiohttp.ClientSession, hub: LocalHub, part: Path):  # type: ignore[no-untyped-def]
    file = PullFile(path=BIG, size=len(DATA), sha256=hashlib.sha256(DATA).hexdigest())

    def start(cancel: asyncio.Event, report) -> asyncio.Future:  # type: ignore[no-untyped-def]
        return fetch_file(session, Source(hub.url, REPO, "main"), file, part, on_bytes=report, cancelled=cancel)
    return start


async def test_one_job_leaving_does_not_stop_a_fetch_another_waits_for(hub: LocalHub, session,
                                                                       tmp_path: Path) -> None:
    part = tmp_path / "model.part"
    pause = hub.pause_at(BIG, 2 * 1024 * 1024)
    gets = len(hub.ranges(BIG))
    seen: dict[str, int] = {"a": 0, "b": 0}
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(shared_fetch(part, starter(session, hub, part), lambda n: seen.update(a=n), stop_a))
    assert await asyncio.to_thread(pause.reached.wait, 10), "the fetch never reached the pause"
    b = asyncio.create_task(shared_fetch(part, starter(session, hub, part), lambda n: seen.update(b=n), stop_b))
    await wait_until_async(lambda: seen["b"] > 0, what="the second job to hear the shared progress")
    stop_a.set()
    with pytest.raises(Cancelled):
        await a
    pause.set()
    await asyncio.wait_for(b, 10)  # the fetch went on for the job still waiting
    assert part.read_bytes() == DATA
    assert seen["b"] == len(DATA)
    assert hub.ranges(BIG)[gets:] == [None], "one GET for both jobs"


async def test_the_last_job_leaving_stops_the_fetch_and_keeps_the_part(hub: LocalHub, session,
                                                                       tmp_path: Path) -> None:
    part = tmp_path / "model.part"
    pause = hub.pause_at(BIG, 2 * 1024 * 1024)
    stops = [asyncio.Event(), asyncio.Event()]
    jobs = [asyncio.create_task(shared_fetch(part, starter(session, hub, part), lambda n: None, stop))
            for stop in stops]
    assert await asyncio.to_thread(pause.reached.wait, 10), "the fetch never reached the pause"
    await wait_until_async(lambda: part.exists() and part.stat().st_size >= 1024 * 1024, what="a MiB on disk")
    for stop in stops:
        stop.set()
    for job in jobs:
        with pytest.raises(Cancelled):
            await asyncio.wait_for(job, 10)
    pause.set()
    # The jobs are gone at once; the fetch they shared stops in the background (its last chunk may still land):
    # what it kept is known once it has.
    stopping = INFLIGHT.get(part)
    if stopping is not None:
        await asyncio.wait_for(asyncio.wait([stopping.task]), 10)
    kept = part.read_bytes()
    assert len(kept) >= 1024 * 1024 and DATA.startswith(kept)
    await asyncio.wait_for(shared_fetch(part, starter(session, hub, part), lambda n: None, asyncio.Event()), 10)
    assert part.read_bytes() == DATA
    assert hub.ranges(BIG)[-1] == f"bytes={len(kept)}-", "a new job resumes what the stopped fetch kept"


def test_paths_that_leave_their_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert inside(root / "hf" / "a--b" / "Q4_K_M" / "x.gguf", root) == root / "hf" / "a--b" / "Q4_K_M" / "x.gguf"
    for escaping in (root / ".." / "x", root / "hf" / ".." / ".." / "x", Path("/etc/passwd"), root / "link" / "x",
                     root):
        with pytest.raises(PullFailed, match="refusing to write"):
            inside(escaping, root)

