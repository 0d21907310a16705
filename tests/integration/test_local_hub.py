"""The local Hub answers the real huggingface_hub client and ranged GETs as huggingface.co does.

The pull tests trust this server to stand in for the Hub, so its wire format is checked here with
the real client, not with our own downloader.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Iterator

import aiohttp
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from tests.support.hub import LocalHub, git_blob_sha1, resolve_url, running_hub

REPO = "tester/Tiny-GGUF"
WEIGHTS = bytes(range(256)) * 1200  # 300 KiB: LFS, served through the CDN redirect
README = b"# Tiny\n"


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    with running_hub() as hub:
        hub.add_repo(REPO, {"tiny-Q4_K_M.gguf": WEIGHTS, "README.md": README, "sub/config.json": b"{}"})
        yield hub


def test_model_info_lists_files_with_sizes_and_hashes(hub: LocalHub) -> None:
    info = HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert info.sha == hub.commit(REPO)
    assert set(siblings) == {"tiny-Q4_K_M.gguf", "README.md", "sub/config.json"}
    weights = siblings["tiny-Q4_K_M.gguf"]
    assert weights.size == len(WEIGHTS) and weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert siblings["README.md"].lfs is None and siblings["README.md"].blob_id == git_blob_sha1(README)


def test_tree_lists_recursively_and_by_folder(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.url)
    everything = {entry.path: entry for entry in api.list_repo_tree(REPO, recursive=True)}
    assert set(everything) == {"tiny-Q4_K_M.gguf", "README.md", "sub", "sub/config.json"}
    assert everything["tiny-Q4_K_M.gguf"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()  # type: ignore[union-attr]
    assert [entry.path for entry in api.list_repo_tree(REPO, path_in_repo="sub")] == ["sub/config.json"]


def test_file_metadata_gives_sha256_for_lfs_and_blob_sha1_for_small_files(hub: LocalHub) -> None:
    lfs = get_hf_file_metadata(hf_hub_url(REPO, "tiny-Q4_K_M.gguf", endpoint=hub.url), token=False)
    small = get_hf_file_metadata(hf_hub_url(REPO, "README.md", endpoint=hub.url), token=False)
    assert (lfs.etag, lfs.size, lfs.commit_hash) == (hashlib.sha256(WEIGHTS).hexdigest(), len(WEIGHTS), hub.commit(REPO))
    assert (small.etag, small.size, small.commit_hash) == (git_blob_sha1(README), len(README), hub.commit(REPO))


def test_small_files_can_answer_with_a_relative_redirect_as_huggingface_co_does(hub: LocalHub) -> None:
    hub.relative_redirects = True
    try:
        small = get_hf_file_metadata(hf_hub_url(REPO, "sub/config.json", endpoint=hub.url), token=False)
        lfs = get_hf_file_metadata(hf_hub_url(REPO, "tiny-Q4_K_M.gguf", endpoint=hub.url), token=False)
    finally:
        hub.clear_faults()
    assert (small.etag, small.size) == (git_blob_sha1(b"{}"), 2)
    assert small.location == f"{hub.url}/api/resolve-cache/models/{REPO}/{hub.commit(REPO)}/sub/config.json"
    assert "/cdn/" in lfs.location, "LFS files still go to the CDN"


def test_unknown_repo_revision_and_file_raise_the_hubs_errors(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        get_hf_file_metadata(hf_hub_url(REPO, "missing.gguf", endpoint=hub.url), token=False)


def test_ranged_get_follows_the_redirect_and_resumes_after_a_cut(hub: LocalHub) -> None:
    url = resolve_url(hub, REPO, "tiny-Q4_K_M.gguf")
    before = hub.bytes_served("tiny-Q4_K_M.gguf")
    hub.cut_once("tiny-Q4_K_M.gguf", 100_000)

    async def fetch() -> tuple[bytes, bytes, int, str]:
        async with aiohttp.ClientSession() as session:
            got = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                async with session.get(url) as resp:
                    async for piece in resp.content.iter_any():
                        got += piece
            async with session.get(url, headers={"Range": f"bytes={len(got)}-"}) as resp:
                rest = await resp.read()
                return got, rest, resp.status, resp.headers["Content-Range"]

    got, rest, status, content_range = asyncio.run(fetch())
    assert len(got) == 100_000 and status == 206
    assert content_range == f"bytes 100000-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
    assert got + rest == WEIGHTS
    assert hub.bytes_served("tiny-Q4_K_M.gguf") - before == len(WEIGHTS)
    assert hub.ranges("tiny-Q4_K_M.gguf")[-2:] == [None, "bytes=100000-"]


def test_range_past_the_end_is_416(hub: LocalHub) -> None:
    async def status() -> int:
        async with aiohttp.ClientSession() as session:
            headers = {"Range": f"bytes={len(WEIGHTS)}-"}
            async with session.get(resolve_url(hub, REPO, "tiny-Q4_K_M.gguf"), headers=headers) as resp:
                return resp.status

    assert asyncio.run(status()) == 416


def test_corrupt_flips_one_byte_and_pause_holds_the_body(hub: LocalHub) -> None:
    hub.corrupt("README.md", 2)
    before = hub.bytes_served("tiny-Q4_K_M.gguf")
    pause = hub.pause_at("tiny-Q4_K_M.gguf", 5000)
    result: dict[str, bytes] = {}

    async def fetch(path: str) -> bytes:
        async with aiohttp.ClientSession() as session:
            async with session.get(resolve_url(hub, REPO, path)) as resp:
                return await resp.read()

    worker = threading.Thread(target=lambda: result.update(weights=asyncio.run(fetch("tiny-Q4_K_M.gguf"))))
    worker.start()
    try:
        assert pause.reached.wait(10)
        assert "weights" not in result
        assert hub.bytes_served("tiny-Q4_K_M.gguf") - before == 5000
    finally:
        pause.set()
        worker.join(10)
    readme = asyncio.run(fetch("README.md"))
    hub.clear_faults()
    assert result["weights"] == WEIGHTS
    assert readme != README and len(readme) == len(README) and readme[2] == README[2] ^ 0xFF


def test_bogus_listing_is_listed_but_not_served(hub: LocalHub) -> None:
    hub.add_repo("tester/Bogus", {"ok.gguf": b"x" * 2000})
    hub.list_bogus("tester/Bogus", "../../x", 2000)
    paths = [s.rfilename for s in HfApi(endpoint=hub.url).model_info("tester/Bogus", files_metadata=True).siblings or []]
    assert "../../x" in paths
    assert hub.bytes_served("../../x") == 0
