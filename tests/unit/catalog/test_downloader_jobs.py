"""A pull job's staging and store steps (catalog/downloader.py, catalog/verified.py), with real fetches from the
local Hub: staged names carry the expected hash, presence needs the verified manifest, the disk check counts a
shared file once, and a take-back leaves a file another pull needs."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from catalog import verified
from catalog.downloader import DownloaderService, PullFailed, PullJob, _FileState
from catalog.fetch import FetchError, new_session
from catalog.inflight import INFLIGHT
from manager.config import Paths, Settings
from manager.protocol import PullFile, PullPlan
from tests.support.hub import LocalHub, running_hub

REPO = "owner/Jobs-GGUF"
NAME = "model-Q4_K_M.gguf"
DIRECTORY = "hf/owner--Jobs-GGUF/Q4_K_M"
DATA = hashlib.sha256(b"new").digest() * (3 * 1024 * 1024 // 32)
OLD = hashlib.sha256(b"old").digest() * (3 * 1024 * 1024 // 32)  # the same size: a fixed re-upload
MB = 1024 * 1024


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    with running_hub() as hub:
        hub.add_repo(REPO, {NAME: DATA})
        yield hub


@pytest.fixture
async def service(tmp_path: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DownloaderService]:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    service = DownloaderService(Settings(), Paths(tmp_path / "home"))
    service.session = new_session()
    yield service
    hub.clear_faults()
    await service.session.close()
    await service.client.close()


def file_of(data: bytes, sha256: str = "", path: str = NAME) -> PullFile:
    return PullFile(path=path, size=len(data), sha256=sha256 or hashlib.sha256(data).hexdigest())


def job_for(service: DownloaderService, *files: PullFile, pull_id: str = "p1") -> PullJob:
    """A job as the worker has it once the name resolved; running (in service.jobs) like the worker's."""
    job = PullJob(service, pull_id, f"{REPO}:Q4_K_M")
    job.plan = job._checked(PullPlan(name=f"{REPO}:Q4_K_M", source="hf", repo=REPO, revision="main",
                                     directory=DIRECTORY, files=files, primary=files[0].path))
    job.files = {f.path: _FileState(f.size, sha256=f.sha256) for f in files}
    service.jobs.add(job)
    return job


async def test_a_part_staged_for_another_hash_is_never_resumed(service: DownloaderService, hub: LocalHub) -> None:
    f = file_of(DATA)
    job = job_for(service, f)
    assert job.plan is not None
    part = job._staged(job.plan, f)
    assert part.name == f"{NAME}.{f.sha256[:16]}.part"
    part.parent.mkdir(parents=True)
    legacy = part.with_name(f"{NAME}.part")
    older = part.with_name(f"{NAME}.{hashlib.sha256(OLD).hexdigest()[:16]}.part")
    for stale in (legacy, older):
        stale.write_bytes(OLD[:MB])  # a prefix of the file as an older commit had it
    gets = len(hub.ranges(f"{REPO}/{NAME}"))
    await job._fetch_one(job.plan, f)
    assert part.read_bytes() == DATA
    assert hub.ranges(f"{REPO}/{NAME}")[gets:] == [None], "fetched from the start, nothing resumed"
    assert not legacy.exists() and not older.exists(), "the stale .part files were removed"


async def test_pulls_expecting_another_hash_do_not_share_a_fetch(service: DownloaderService, hub: LocalHub) -> None:
    right, stale = file_of(DATA), file_of(DATA, sha256="ab" * 32)  # the second resolved before the repo changed
    a, b = job_for(service, right, pull_id="a"), job_for(service, stale, pull_id="b")
    assert a.plan is not None and b.plan is not None
    pause = hub.pause_at(f"{REPO}/{NAME}", 2 * MB)
    first = asyncio.create_task(a._fetch_one(a.plan, right))
    try:
        assert await asyncio.to_thread(pause.reached.wait, 10), "the first fetch never started"
        assert a._staged(a.plan, right) in INFLIGHT
        with pytest.raises(FetchError, match="listing said"):  # its own fetch, checked against its own hash
            await asyncio.wait_for(b._fetch_one(b.plan, stale), 10)
    finally:
        pause.set()
    await asyncio.wait_for(first, 10)
    assert a._staged(a.plan, right).read_bytes() == DATA, "the other job's failure left this fetch alone"


async def test_a_file_counts_as_present_only_with_the_hash_it_was_verified_against(
        service: DownloaderService) -> None:
    f = file_of(DATA)
    job = job_for(service, f)
    assert job.plan is not None
    final = service.paths.models / DIRECTORY / NAME
    final.parent.mkdir(parents=True)
    final.write_bytes(OLD)  # the size the plan lists, other bytes, never verified
    assert job._present_now(job.plan, job.plan.files) == set()
    await job._fetch_one(job.plan, f)
    assert job._move_into_place(job.plan, [f]) == [f]
    assert final.read_bytes() == DATA, "the new file replaced the old one on the move"
    assert verified.read(final.parent) == {NAME: {"size": len(DATA), "sha256": f.sha256}}
    assert job._present_now(job.plan, job.plan.files) == {NAME}
    later = file_of(DATA, sha256="cd" * 32)  # a re-upload of the same size: another hash, the same bytes count
    assert job._present_now(job.plan, [later]) == set()
    assert not list(service.paths.downloads.rglob("*")), "staging pruned"


async def test_the_disk_check_counts_a_shared_file_once(service: DownloaderService) -> None:
    size = 200 * MB
    big = PullFile(path=NAME, size=size, sha256="ef" * 32)
    first, second = job_for(service, big, pull_id="a"), job_for(service, big, pull_id="b")
    assert first.plan is not None and second.plan is not None
    service.paths.models.mkdir(parents=True)
    free = shutil.disk_usage(service.paths.models).free
    service.settings = Settings(disk_reserve_mb=int((free - 1.5 * size) // MB))  # room for one copy, not two
    second._check_disk(second.plan, [big])  # the first job's fetch is the same file: no second copy is needed
    third = job_for(service, PullFile(path="other.gguf", size=size, sha256="12" * 32), pull_id="c")
    assert third.plan is not None
    with pytest.raises(PullFailed, match="not enough disk space") as refused:
        third._check_disk(third.plan, list(third.plan.files))  # another file: both have to fit
    assert refused.value.status == 507


def test_a_take_back_leaves_a_file_another_running_pull_needs(service: DownloaderService) -> None:
    f = file_of(DATA)
    mine, theirs = job_for(service, f, pull_id="a"), job_for(service, f, pull_id="b")
    assert mine.plan is not None
    staged, final = mine._staged(mine.plan, f), mine._final(mine.plan, f)
    staged.parent.mkdir(parents=True)
    staged.write_bytes(DATA)
    moved = mine._move_into_place(mine.plan, [f])
    mine._take_back(mine.plan, moved, service.needed_besides(mine))
    assert final.read_bytes() == DATA and not staged.exists(), "the other pull's file stayed in the store"
    assert mine._present_now(mine.plan, [f]) == {NAME}
    service.jobs.discard(theirs)
    mine._take_back(mine.plan, moved, service.needed_besides(mine))
    assert staged.read_bytes() == DATA and not final.exists(), "alone, the job takes its file back"
    assert not (service.paths.models / DIRECTORY).exists(), "the directory and its manifest went with it"


def test_a_listing_that_escapes_the_directory_fails_as_the_hubs_fault(service: DownloaderService) -> None:
    with pytest.raises(PullFailed, match=r"lists the file '\.\./\.\./evil\.gguf'") as refused:
        job_for(service, PullFile(path="../../evil.gguf", size=1, sha256="00" * 32))
    assert refused.value.status == 502
