"""catalog/fetch.py against the local Hub: verified fetches, resume, retries, corruption, cancel, auth, and what a
broken mirror or a hostile hub may answer."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

import catalog.fetch
from catalog.fetch import (CHUNK, Cancelled, DiskFull, FetchError, HashMismatch, Source, _get, fetch_file,
                           hub_token, new_session)
from manager.protocol import PullFile
from tests.support.hub import HubRequest, LocalHub, running_hub
from tests.support.instance import wait_until_async

REPO = "owner/Model-GGUF"
BIG = "model-Q4_K_M.gguf"
SMALL = "config.json"
BIG_BYTES = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32 + 77)  # ~3 MiB, not chunk aligned
SMALL_BYTES = b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}\n'


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog.fetch, "BACKOFF_S", (0.01,) * 4)


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
    await wait_until_async(lambda: progress.last >= 2 * 1024 * 1024, what="2 MiB written")
    cancelled.set()  # while the server holds the rest back: the read in progress is interrupted
    with pytest.raises(Cancelled):
        await asyncio.wait_for(task, 10)
    pause.set()
    kept = part.read_bytes()
    assert len(kept) >= 2 * 1024 * 1024 and BIG_BYTES.startswith(kept)
    await fetch(session, hub, pull_file(hub, BIG), part)
    assert part.read_bytes() == BIG_BYTES
    assert hub.ranges(BIG)[-1] == f"bytes={len(kept)}-"


async def test_a_cancel_keeps_every_byte_it_reported(hub: LocalHub, session, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A write still queued for the writer thread when the cancel comes is done, not dropped: the .part holds
    every byte on_bytes reported (a slow disk, here a writer thread held busy, leaves writes queued)."""
    import concurrent.futures
    writers = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(catalog.fetch, "_WRITERS", writers)
    disk_free = threading.Event()
    writers.submit(disk_free.wait, 30)
    part, cancelled, progress = tmp_path / "big.part", asyncio.Event(), Progress()
    task = asyncio.create_task(fetch(session, hub, pull_file(hub, BIG), part, cancelled=cancelled,
                                     progress=progress))
    await wait_until_async(lambda: progress.last > 0, what="a write handed to the thread")
    cancelled.set()

    def closing() -> bool:  # the fetch ended, or waits for its queued write before closing the .part
        awaiting = task.get_coro()
        while awaiting is not None and getattr(awaiting, "__name__", "") != "_outlive":
            awaiting = getattr(awaiting, "cr_await", None)
        return task.done() or awaiting is not None
    await wait_until_async(closing, what="the cancel delivered")
    disk_free.set()
    with pytest.raises(Cancelled):
        await asyncio.wait_for(task, 10)
    writers.shutdown()
    assert part.stat().st_size == progress.last > 0


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


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ScriptedHub(LocalHub):
    """The local Hub, with answers scripted per path (each taken once) for what the real Hub never says."""

    def __init__(self) -> None:
        super().__init__()
        self.script: dict[str, list[Answer]] = {}
        self.streamed = 0

    def once(self, path: str, answer: Answer) -> None:
        self.script.setdefault(path, []).append(answer)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if answers := self.script.get(request.path):
            self.requests.append(HubRequest(request.method, request.path, request.headers.get("Range")))
            if auth := request.headers.get("Authorization"):
                self.authorizations.append(auth)
            return await answers.pop(0)(request)
        return await super()._dispatch(request)


def resolve_path(path: str, repo: str = REPO) -> str:
    return f"/{repo}/resolve/main/{path}"


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers or {})
    return respond


@pytest.fixture
def scripted() -> Iterator[ScriptedHub]:
    with ScriptedHub().start() as hub:
        hub.add_repo(REPO, {BIG: BIG_BYTES, SMALL: SMALL_BYTES})
        yield hub  # type: ignore[misc]


async def test_an_error_page_for_a_range_request_keeps_the_part(scripted: ScriptedHub, session, quick_retries,
                                                                  tmp_path: Path) -> None:
    part = tmp_path / "big.part"
    part.write_bytes(BIG_BYTES[:4096])
    scripted.once(resolve_path(BIG), answer(200, b"<html>proxy error</html>"))
    await fetch(session, scripted, pull_file(scripted, BIG), part)
    assert part.read_bytes() == BIG_BYTES
    assert [r.range for r in scripted.requests if r.path == resolve_path(BIG)] == ["bytes=4096-"] * 2, \
        "the retry resumed the bytes kept"


async def test_a_range_at_the_wrong_start_keeps_the_part(scripted: ScriptedHub, session, quick_retries,
                                                         tmp_path: Path) -> None:
    part = tmp_path / "big.part"
    part.write_bytes(BIG_BYTES[:4096])
    scripted.once(resolve_path(BIG), answer(206, BIG_BYTES[:100], {"Content-Range": f"bytes 0-99/{len(BIG_BYTES)}"}))
    scripted.once(resolve_path(BIG), answer(206, b"??", {"Content-Range": "garbage"}))
    await fetch(session, scripted, pull_file(scripted, BIG), part)
    assert part.read_bytes() == BIG_BYTES
    assert [r.range for r in scripted.requests if r.path == resolve_path(BIG)] == ["bytes=4096-"] * 3


async def test_a_listed_size_of_zero_is_binding(hub: LocalHub, session, tmp_path: Path) -> None:
    part = tmp_path / "big.part"
    lying = PullFile(path=BIG, size=0, sha256=hub.file(REPO, BIG).sha256)
    with pytest.raises(FetchError, match=f"the server offers {len(BIG_BYTES)} bytes of {BIG} from byte 0, but the "
                                         "Hub lists 0 bytes in all"):
        await fetch(session, hub, lying, part)
    assert not part.exists(), "refused before a byte was written"


async def test_a_stream_past_the_listed_size_stops_at_once(scripted: ScriptedHub, session, tmp_path: Path) -> None:
    endless = 256 * CHUNK

    async def flood(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)  # no Content-Length: only the listed size can stop it
        await resp.prepare(request)
        try:
            while scripted.streamed < endless:
                await resp.write(b"\0" * CHUNK)
                scripted.streamed += CHUNK
        except (ConnectionError, RuntimeError):
            pass
        return resp

    scripted.once(resolve_path(SMALL), flood)
    part = tmp_path / "small.part"
    with pytest.raises(HashMismatch, match=f"mismatch for {SMALL}"):
        await fetch(session, scripted, PullFile(path=SMALL, size=0, sha1="0" * 40), part)
    assert scripted.streamed < endless // 4, "the read stopped soon after the listed size"
    assert not part.exists()


@pytest.mark.parametrize("location", ["ftp://example.com/x.gguf", "file:///etc/passwd"])
async def test_a_redirect_off_http_is_refused(scripted: ScriptedHub, session, tmp_path: Path, location: str) -> None:
    scripted.once(resolve_path(SMALL), answer(302, headers={"Location": location}))
    with pytest.raises(FetchError, match=f"refusing the redirect of {SMALL} from .* to '{location}'"):
        await fetch(session, scripted, pull_file(scripted, SMALL), tmp_path / "small.part")
    assert not (tmp_path / "small.part").exists()


def test_a_downgrade_or_a_malformed_location_is_refused() -> None:
    get = _get(None, Source("https://hub.example", REPO, "main"), PullFile(path=SMALL, size=1), 0)  # type: ignore[arg-type]
    here = URL("https://hub.example/owner/x/resolve/main/config.json")
    assert get._redirect(here, "https://cdn.example/a") == URL("https://cdn.example/a")
    for location in ("http://cdn.example/a", "http://[::1", "http:///nohost"):
        with pytest.raises(FetchError, match=f"refusing the redirect of {SMALL} from {here} to"):
            get._redirect(here, location)


async def test_a_relative_redirect_is_followed_with_the_token(scripted: ScriptedHub, session,
                                                              tmp_path: Path) -> None:
    cache = f"/api/resolve-cache/models/{REPO}/abc123/{SMALL}"
    blob = scripted.file(REPO, SMALL).blob_id
    scripted.once(resolve_path(SMALL), answer(307, headers={"Location": cache + "?x=1", "ETag": f'"{blob}"'}))
    scripted.once(cache, answer(200, SMALL_BYTES, {"ETag": f'"{blob}"'}))
    await fetch(session, scripted, pull_file(scripted, SMALL), tmp_path / "small.part", token="hf_secret")
    assert (tmp_path / "small.part").read_bytes() == SMALL_BYTES
    assert [r.path for r in scripted.requests] == [resolve_path(SMALL), cache]
    assert scripted.authorizations == ["Bearer hf_secret"] * 2, "the same origin: still the Hub"


@pytest.mark.parametrize("status", [401, 404])
async def test_a_refused_file_leaves_no_part_and_no_directory(scripted: ScriptedHub, session, tmp_path: Path,
                                                              status: int) -> None:
    scripted.once(resolve_path(BIG), answer(status))
    part = tmp_path / "hf" / "owner--model" / "Q4_K_M" / "big.part"
    with pytest.raises(FetchError):
        await fetch(session, scripted, pull_file(scripted, BIG), part)
    assert not (tmp_path / "hf").exists()


async def test_rehashing_a_resumed_part_reports_progress(hub: LocalHub, session, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setattr(catalog.fetch, "HASH_REPORT_BYTES", CHUNK)
    part = tmp_path / "big.part"
    part.write_bytes(BIG_BYTES[:2 * CHUNK + 5])
    progress = Progress()
    await fetch(session, hub, pull_file(hub, BIG), part, progress=progress)
    assert progress.seen[:3] == [CHUNK, 2 * CHUNK, 2 * CHUNK + 5], "each MiB hashed was heard before the download"
    assert part.read_bytes() == BIG_BYTES


async def test_a_repo_id_is_quoted_in_the_url(session, tmp_path: Path) -> None:
    with running_hub() as hub:
        hub.add_repo("owner/odd name#1", {SMALL: SMALL_BYTES})
        await fetch(session, hub, pull_file(hub, SMALL, "owner/odd name#1"), tmp_path / "s.part",
                    repo="owner/odd name#1")
        assert (tmp_path / "s.part").read_bytes() == SMALL_BYTES


def test_hub_token_is_the_one_huggingface_hub_uses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    saved = tmp_path / "token"
    saved.write_text("hf_saved_by_login\n")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(saved))
    assert hub_token() == "hf_saved_by_login"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert hub_token() == "hf_from_env"
    saved.unlink()
    monkeypatch.delenv("HF_TOKEN")
    assert hub_token() is None


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names an fd's file through /proc")
async def test_a_cancel_never_lets_the_writer_use_the_fd_after_close(hub: LocalHub, session, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    part = tmp_path / "big.part"
    events: list[str] = []
    writing, release = threading.Event(), threading.Event()
    real_write, real_close = os.write, os.close

    def is_part(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}") == str(part)
        except OSError:
            return False

    def slow_write(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        if is_part(fd):
            writing.set()
            release.wait(30)
            events.append("write")
        return real_write(fd, data)

    def close(fd: int) -> None:
        if is_part(fd):
            events.append("close")
        real_close(fd)

    monkeypatch.setattr(os, "write", slow_write)
    monkeypatch.setattr(os, "close", close)
    cancelled = asyncio.Event()
    task = asyncio.create_task(fetch(session, hub, pull_file(hub, BIG), part, cancelled=cancelled))
    try:
        await wait_until_async(writing.is_set, what="the first write to the .part")
        cancelled.set()
        # The fetch either closed the fd at once (the bug) or waits in close() for the write in flight.
        await wait_until_async(lambda: "close" in events or "close" in _awaiting(task), what="the fetch to close")
    finally:
        release.set()
    with pytest.raises(Cancelled):
        await asyncio.wait_for(task, 10)
    assert events[-1] == "close" and "write" in events, f"the fd was closed before its last write: {events}"
    assert BIG_BYTES.startswith(part.read_bytes()), "what was written is kept for the resume"


def _awaiting(task: asyncio.Task) -> set[str]:  # type: ignore[type-arg]
    """The coroutines `task` is suspended in, outermost first."""
    names, coro = set(), task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        names.add(coro.cr_code.co_name)
        coro = coro.cr_await
    return names
