"""catalog/fetch.py against the local Hub: verified fetches, resume, retries, corruption, cancel, auth."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from catalog.fetch import Cancelled, DiskFull, FetchError, HashMismatch, Source, fetch_file, new_session
from manager.protocol import PullFile
from tests.support.hub import LocalHub, running_hub
from tests.support.instance import wait_until_async

REPO = "owner/Model-GGUF"
BIG = "model-Q4_K_M.gguf"
SMALL = "config.json"
BIG_BYTES = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32 + 77)  # ~3 MiB, not chunk aligned
SMALL_BYTES = b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}\n'


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    with running_hub() as hub:
        hub.add_repo(REPO, {BIG: BIG_BYTES, SMALL: SMALL_BYTES, "sub dir/a+b.gguf": BIG_BYTES[:5000]})
        yield hub


@pytest.fixture(autouse=True)
def _no_faults(hub: LocalHub) -> Iterator[None]:
    hub.clear_faults()
    yield
    hub.clear_faults()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session() as session:
        yield session


def pull_file(hub: LocalHub, path: str, repo: str = REPO) -> PullFile:
    """What the resolver lists for `path`: sha256 for LFS files, the git blob id for small ones."""
    f = hub.file(repo, path)
    return PullFile(path=path, size=f.size, sha256=f.sha256 if f.lfs else "", sha1="" if f.lfs else f.blob_id)


class Progress:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, done: int) -> None:
        self.seen.append(done)

    @property
    def last(self) -> int:
        return self.seen[-1] if self.seen else 0


async def fetch(session: aiohttp.ClientSession, hub: LocalHub, file: PullFile, part: Path, *,
                token: str | None = None, cancelled: asyncio.Event | None = None,
                progress: Progress | None = None, repo: str = REPO) -> None:
    await fetch_file(session, Source(hub.url, repo, "main", token), file, part,
                     on_bytes=progress or Progress(), cancelled=cancelled or asyncio.Event())


async def test_fetches_and_verifies_an_lfs_file_and_a_git_file(hub: LocalHub, session, tmp_path: Path) -> None:
    progress = Progress()
    await fetch(session, hub, pull_file(hub, BIG), tmp_path / "big.part", progress=progress)
    await fetch(session, hub, pull_file(hub, SMALL), tmp_path / "small.part")
    assert (tmp_path / "big.part").read_bytes() == BIG_BYTES
    assert (tmp_path / "small.part").read_bytes() == SMALL_BYTES
    assert progress.last == len(BIG_BYTES)
    assert any(r.path.startswith("/cdn/") for r in hub.requests), "the LFS file came through the redirect"


async def test_path_with_spaces_and_plus_is_quoted_per_segment(hub: LocalHub, session, tmp_path: Path) -> None:
    await fetch(session, hub, pull_file(hub, "sub dir/a+b.gguf"), tmp_path / "ab.part")
    assert (tmp_path / "ab.part").read_bytes() == BIG_BYTES[:5000]


async def test_resumes_an_existing_part_with_a_range_request(hub: LocalHub, session, tmp_path: Path) -> None:
    part = tmp_path / "big.part"
    have = 1_234_567
    part.write_bytes(BIG_BYTES[:have])
    served = hub.bytes_served(BIG)
    await fetch(session, hub, pull_file(hub, BIG), part)
    assert part.read_bytes() == BIG_BYTES
    assert hub.ranges(BIG)[-1] == f"bytes={have}-"
    assert hub.bytes_served(BIG) - served == len(BIG_BYTES) - have, "the bytes it had were not fetched again"


async def test_a_connection_cut_halfway_is_resumed_by_the_retry(hub: LocalHub, session, tmp_path: Path) -> None:
    part = tmp_path / "big.part"
    served, gets = hub.bytes_served(BIG), len(hub.ranges(BIG))
    hub.cut_once(BIG, len(BIG_BYTES) // 2)
    await fetch(session, hub, pull_file(hub, BIG), part)
    assert part.read_bytes() == BIG_BYTES
    ranges = hub.ranges(BIG)[gets:]
    assert ranges == [None, f"bytes={len(BIG_BYTES) // 2}-"]
    assert hub.bytes_served(BIG) - served == len(BIG_BYTES), "nothing was fetched twice"


async def test_a_corrupted_byte_fails_the_hash_and_deletes_the_part(hub: LocalHub, session, tmp_path: Path) -> None:
    part = tmp_path / "big.part"
    hub.corrupt(BIG, 2_000_000)
    with pytest.raises(HashMismatch) as caught:
        await fetch(session, hub, pull_file(hub, BIG), part)
    assert str(caught.value).startswith(f"sha256 mismatch for {BIG}: expected {hub.file(REPO, BIG).sha256}, got ")
    assert str(caught.value).endswith("; the partial file was deleted")
    assert not part.exists()


async def test_a_corrupted_small_file_fails_its_git_blob_hash(hub: LocalHub, session, tmp_path: Path) -> None:
    part = tmp_path / "small.part"
    hub.corrupt(SMALL, 3)
    with pytest.raises(HashMismatch, match=f"sha1 mismatch for {SMALL}"):
        await fetch(session, hub, pull_file(hub, SMALL), part)
    assert not part.exists()


async def test_a_corrupt_part_resumed_is_caught_too(hub: LocalHub, session, tmp_path: Path) -> None:
    part = tmp_path / "big.part"
    part.write_bytes(b"\0" * 1000)  # not the file's first bytes: only the whole-file hash can tell
    with pytest.raises(HashMismatch):
        await fetch(session, hub, pull_file(hub, BIG), part)
    assert not part.exists()


class RangeIgnoringHub(LocalHub):
    """A server that answers every range request with the whole file (200), as some mirrors do."""

    async def _send(self, request: web.Request, repo_id: str, f, headers: dict[str, str]) -> web.StreamResponse:  # type: ignore[no-untyped-def, override]
        plain = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() != "range")
        return await super()._send(request.clone(headers=plain), repo_id, f, headers)


async def test_a_200_to_a_range_request_starts_over(session, tmp_path: Path) -> None:
    with RangeIgnoringHub().start() as hub:
        hub.add_repo(REPO, {BIG: BIG_BYTES})
        part = tmp_path / "big.part"
        part.write_bytes(b"\xff" * 4096)  # appending the full body to these would fail the hash
        await fetch(session, hub, pull_file(hub, BIG), part)
        assert part.read_bytes() == BIG_BYTES
        assert [r.range for r in hub.requests if r.path.startswith("/cdn/")] == ["bytes=4096-"]


async def test_a_complete_part_is_verified_without_fetching_again(hub: LocalHub, session, tmp_path: Path) -> None:
    part = tmp_path / "big.part"
    part.write_bytes(BIG_BYTES)
    served = hub.bytes_served(BIG)
    await fetch(session, hub, pull_file(hub, BIG), part)  # the server answers 416
    assert hub.bytes_served(BIG) == served
    assert part.read_bytes() == BIG_BYTES


async def test_cancel_stops_the_fetch_and_keeps_the_part(hub: LocalHub, session, tmp_path: Path) -> None:
    part = tmp_path / "big.part"
    pause = hub.pause_at(BIG, len(BIG_BYTES) - 100_000)
    cancelled, progress = asyncio.Event(), Progress()
    task = asyncio.create_task(fetch(session, hub, pull_file(hub, BIG), part, cancelled=cancelled,
                                     progress=progress))
    await wait_until_async(_async(lambda: progress.last >= 2 * 1024 * 1024), what="2 MiB written")
    cancelled.set()  # while the server holds the rest back: the read in progress is interrupted
    with pytest.raises(Cancelled):
        await asyncio.wait_for(task, 10)
    pause.set()
    kept = part.read_bytes()
    assert len(kept) >= 2 * 1024 * 1024 and BIG_BYTES.startswith(kept)
    await fetch(session, hub, pull_file(hub, BIG), part)
    assert part.read_bytes() == BIG_BYTES
    assert hub.ranges(BIG)[-1] == f"bytes={len(kept)}-"


async def test_the_token_goes_to_the_hub_and_not_to_another_host(session, tmp_path: Path) -> None:
    with running_hub(cdn_host="localhost") as hub:  # the CDN on another origin, as on the real Hub
        hub.add_repo(REPO, {BIG: BIG_BYTES, SMALL: SMALL_BYTES})
        await fetch(session, hub, pull_file(hub, BIG), tmp_path / "big.part", token="hf_secret")
        await fetch(session, hub, pull_file(hub, SMALL), tmp_path / "small.part", token="hf_secret")
        assert (tmp_path / "big.part").read_bytes() == BIG_BYTES
        assert [r.path.split("/")[1] for r in hub.requests] == ["owner", "cdn", "owner"]
        assert hub.authorizations == ["Bearer hf_secret", "Bearer hf_secret"], "none sent to the CDN"


async def test_a_missing_file_says_so(hub: LocalHub, session, tmp_path: Path) -> None:
    gone = PullFile(path="nope.gguf", size=10, sha256="0" * 64)
    with pytest.raises(FetchError, match=f"nope.gguf was not found in {REPO}"):
        await fetch(session, hub, gone, tmp_path / "nope.part")


async def test_a_hash_that_disagrees_with_the_hub_is_refused(hub: LocalHub, session, tmp_path: Path) -> None:
    stale = PullFile(path=BIG, size=len(BIG_BYTES), sha256="ab" * 32)
    with pytest.raises(FetchError, match=f"the Hub reports sha256 {hub.file(REPO, BIG).sha256} for {BIG}"):
        await fetch(session, hub, stale, tmp_path / "big.part")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_a_full_disk_raises_disk_full(hub: LocalHub, session, tmp_path: Path) -> None:
    part = tmp_path / "big.part"
    part.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full filesystem
    with pytest.raises(DiskFull, match=f"disk full while writing {BIG}"):
        await fetch(session, hub, pull_file(hub, BIG), part)


def _async(predicate):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return bool(predicate())
    return check
