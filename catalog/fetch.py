"""Fetch one Hub file into its `.part` and verify it: resumed with a range request, hashed while written.

Hugging Face's own client neither resumes an interrupted file nor checks the sha256 (huggingface_hub
issues 4060 and 4196); this does both. Redirects are followed here, so that the token only goes to the Hub.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import aiohttp
from yarl import URL

from manager.protocol import PullFile

log = logging.getLogger("lmforge.fetch")

CHUNK = 1 << 20  # what goes to disk per write
RETRIES = 4  # attempts in a row that make no progress before giving up
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
MAX_REDIRECTS = 10
DEFAULT_ENDPOINT = "https://huggingface.co"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # a write that failed for want of space
WRITEBACK_BYTES = 32 * CHUNK
HASH_REPORT_BYTES = 16 * CHUNK  # how often re-hashing a resumed .part reports its progress
_FADVISE = hasattr(os, "posix_fadvise")
# One thread per file: it hashes and writes a chunk while the loop reads the next one.
_WRITERS = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch-write")


class FetchError(Exception):
    """A file could not be fetched; the message is for the user, `status` the HTTP status a pull failing of it
    answers with (502: the Hub, or what it served, is at fault)."""

    status = 502

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class HashMismatch(FetchError):
    """The bytes are not the file the Hub lists: the .part was deleted."""


class DiskFull(FetchError):
    """The disk filled up while writing (ENOSPC, EDQUOT)."""

    status = 507


class Cancelled(Exception):
    """The fetch was cancelled; the .part stays for the next pull to resume."""


class _Retry(Exception):
    """A failure worth another attempt (a cut connection, a 5xx): the next one resumes from the .part."""


def hub_endpoint() -> str:
    """Read at call time, so that tests (and a mirror set after start) can point it anywhere."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def hub_token() -> str | None:
    """The token huggingface_hub itself would use: HF_TOKEN, or the one `huggingface-cli login` saved."""
    from huggingface_hub import get_token  # slow to import: only when a pull needs it

    return get_token() or None


def file_url(endpoint: str, repo: str, revision: str, path: str) -> URL:
    """Every segment quoted: the repo id and the paths come from the Hub's answers."""
    def quoted(value: str) -> str:
        return "/".join(quote(seg, safe="") for seg in value.split("/"))
    return URL(f"{endpoint.rstrip('/')}/{quoted(repo)}/resolve/{quote(revision or 'main', safe='')}/{quoted(path)}",
               encoded=True)


def new_session() -> aiohttp.ClientSession:
    """No total timeout (a slow link must not fail a big file): a read that stalls for a minute does."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    # A deep read buffer: the transport pauses less often, and each read returns more.
    return aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=True, read_bufsize=4 * CHUNK,
                                 connector=aiohttp.TCPConnector(limit=32))


@dataclass
class Source:
    """Where a file comes from, and with what credentials."""

    endpoint: str
    repo: str
    revision: str
    token: str | None = None


async def fetch_file(session: aiohttp.ClientSession, source: Source, file: PullFile, part: Path, *,
                     on_bytes: Callable[[int], None], cancelled: asyncio.Event) -> None:
    """Bring `part` to the whole verified file (fsynced), resuming what it holds. `on_bytes` hears the bytes
    now in the .part (and, while a resumed .part is re-hashed, the bytes hashed so far). Raises FetchError
    (HashMismatch, DiskFull) or Cancelled; only a mismatch deletes the .part, and none is made before the Hub
    answers with the file."""
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.get_running_loop().create_task(_cancel_on(cancelled, task))
    try:
        await _fetch(session, source, file, part, on_bytes)
    except asyncio.CancelledError:
        if cancelled.is_set() and task.uncancel() == 0:
            raise Cancelled(f"cancelled while fetching {file.path}") from None
        raise
    finally:
        watcher.cancel()


async def _cancel_on(cancelled: asyncio.Event, task: asyncio.Task[Any]) -> None:
    # Interrupts a read that waits on a stalled server too, not only between chunks.
    await cancelled.wait()
    task.cancel()


async def _fetch(session: aiohttp.ClientSession, source: Source, file: PullFile, part: Path,
                 on_bytes: Callable[[int], None]) -> None:
    async with _PartFile(part, file) as out:
        await out.hash_existing(on_bytes)
        on_bytes(out.size)
        failures = 0
        while True:
            before = out.size
            try:
                await _attempt(session, source, file, out, on_bytes)
                break
            except _Retry as exc:
                failures = 0 if out.size > before else failures + 1
                if failures >= RETRIES:
                    raise FetchError(f"could not fetch {file.path} from {source.endpoint}: {exc}") from None
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                log.warning("fetching %s: %s; retrying in %.1fs from byte %d", file.path, exc, delay, out.size)
                await asyncio.sleep(delay)
        await out.finish(file)


async def _attempt(session: aiohttp.ClientSession, source: Source, file: PullFile, out: _PartFile,
                   on_bytes: Callable[[int], None]) -> None:
    """One request: 206 appends, 416 means the .part already holds everything, and a 200 starts over only when it
    is the whole file: an error page from a proxy, or a mirror's wrong range, must not destroy what is kept."""
    try:
        async with _get(session, source, file, out.size) as (resp, hub_headers):
            out.check_hub_hash(file, hub_headers)
            if resp.status == 416 and out.size:
                return
            if resp.status == 206:
                start = _range_start(resp.headers.get("Content-Range", ""))
                if start != out.size:
                    raise _Retry(f"the server answered a range from byte {start}, not {out.size}")
            elif resp.status == 200:
                if out.size and resp.content_length != file.size:
                    raise _Retry(f"the server answered a range request with {resp.content_length} bytes, "
                                 f"not the {file.size} of the whole file")
                if out.size:
                    log.info("%s: the server ignored the range request; starting over", file.path)
                    await out.truncate()
                    on_bytes(0)
            else:
                _raise_for_status(resp.status, file, source)
            if resp.content_length is not None and resp.content_length > file.size - out.size:
                raise FetchError(f"the server offers {resp.content_length} bytes of {file.path} from byte "
                                 f"{out.size}, but the Hub lists {file.size} bytes in all")
            out.open()
            try:
                await _copy_body(resp, file, out, on_bytes)
            except aiohttp.ClientPayloadError:
                # Bytes that arrived before the cut are sound; aiohttp hides them once the error is set.
                if rest := _received(resp):
                    await out.write(rest)
                    on_bytes(out.size)
                raise
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        await out.drain()  # the write in flight: what arrived before the cut is kept for the resume
        raise _Retry(str(exc) or type(exc).__name__) from None
    except _Retry:
        await out.drain()
        raise
    await out.drain()  # after a cancel, close() waits for it instead
    if out.size < file.size:
        raise _Retry(f"the connection ended at byte {out.size} of {file.size}")


async def _copy_body(resp: aiohttp.ClientResponse, file: PullFile, out: _PartFile,
                     on_bytes: Callable[[int], None]) -> None:
    while data := await resp.content.readany():
        # Whatever else has already arrived goes in the same write: big writes when the network is fast,
        # and nothing held back in memory when it stalls.
        pieces, size = [data], len(data)
        while size < CHUNK and (more := resp.content.read_nowait(CHUNK - size)):
            pieces.append(more)
            size += len(more)
        await out.write(b"".join(pieces) if len(pieces) > 1 else data)
        on_bytes(out.size)
        if out.size > file.size:
            return  # more than the listing says (0 included): the size check reports it, and the disk is spared


def _received(resp: aiohttp.ClientResponse) -> bytes:
    """What the stream still buffers after a payload error (aiohttp's public reads raise the error instead)."""
    try:
        return bytes(resp.content._read_nowait(-1))  # noqa: SLF001 - no public way to take them
    except Exception:
        return b""


class _get:
    """GET with the redirects followed by hand: the token goes only to the endpoint's host. Yields the final
    response and the headers of the last answer from the Hub itself (a CDN's ETag is not the Hub's)."""

    def __init__(self, session: aiohttp.ClientSession, source: Source, file: PullFile, offset: int) -> None:
        self.session, self.source, self.file, self.offset = session, source, file, offset
        self.resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> tuple[aiohttp.ClientResponse, dict[str, str]]:
        url = file_url(self.source.endpoint, self.source.repo, self.source.revision, self.file.path)
        try:
            hub = URL(self.source.endpoint).origin()
        except ValueError:
            hub = None
        if hub is None or hub.scheme not in ("http", "https"):
            raise FetchError(f"cannot fetch {self.file.path}: the Hub's address {self.source.endpoint!r} "
                             "(HF_ENDPOINT) is not an http(s) URL", status=500)
        hub_headers: dict[str, str] = {}
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Accept-Encoding": "identity", "User-Agent": "lmforge"}
            if self.offset:
                headers["Range"] = f"bytes={self.offset}-"
            if self.source.token and url.origin() == hub:
                headers["Authorization"] = f"Bearer {self.source.token}"
            try:
                resp = await self.session.get(url, headers=headers, allow_redirects=False)
            except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError) as exc:  # a bad HF_ENDPOINT
                raise FetchError(f"cannot fetch {self.file.path} from {url}: {exc}") from None
            if url.origin() == hub:
                for name in ("X-Linked-Etag", "ETag"):
                    if name in resp.headers:
                        hub_headers[name] = resp.headers[name]
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                resp.release()
                url = self._redirect(url, resp.headers["Location"])
                continue
            self.resp = resp
            return resp, hub_headers
        raise FetchError(f"too many redirects fetching {self.file.path}")

    def _redirect(self, url: URL, location: str) -> URL:
        """Where a redirect leads (relative ones too: the Hub sends small files to /api/resolve-cache/...), if it
        is http(s) and no step down from https."""
        try:
            target = url.join(URL(location, encoded=True))
        except ValueError:
            target = None
        if target is None or target.scheme not in ("http", "https") or not target.host \
                or (url.scheme == "https" and target.scheme == "http"):
            raise FetchError(f"refusing the redirect of {self.file.path} from {url} to {location!r}: only http(s) "
                             "is followed, and never from https down to http")
        return target

    async def __aexit__(self, *exc: object) -> None:
        if self.resp is not None:
            self.resp.release()


def _range_start(content_range: str) -> int:
    match = re.match(r"bytes (\d+)-", content_range)
    return int(match.group(1)) if match else -1


def _raise_for_status(status: int, file: PullFile, source: Source) -> None:
    if status in (401, 403):
        raise FetchError(f"{source.repo} is gated or private (HTTP {status} for {file.path}): set HF_TOKEN to a "
                         "token that has access to it (and accept its terms on the Hub)", status=403)
    if status == 404:
        raise FetchError(f"{file.path} was not found in {source.repo} at revision {source.revision or 'main'}",
                         status=404)
    if status >= 500 or status == 429:
        raise _Retry(f"the Hub answered HTTP {status}")
    raise FetchError(f"fetching {file.path} from {source.repo} failed: HTTP {status}")


def _etag_hex(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()


class _PartFile:
    """The .part being written, and the hash of everything in it. Writes, hashing and fsync run on a thread, one
    chunk behind the network reads; errors from the disk arrive as DiskFull or FetchError. The fd is opened only
    once the Hub answers with the file (a 404 leaves no empty .part), and closed only after the thread's last use
    of it: a cancel must not let the thread write into an fd number that another file has been given since."""

    def __init__(self, path: Path, file: PullFile) -> None:
        self.path = path
        self.name = file.path
        self.kind = "sha256" if file.sha256 or not file.sha1 else "sha1"
        self.expected_size = file.size
        self.fd = -1
        self.size = 0
        self.hash = self._new_hash()
        self._pending: concurrent.futures.Future[None] | None = None  # cleared only once it has ended
        self._written = self._flushed = 0  # bytes on disk; of those, handed to the disk's writeback so far

    async def __aenter__(self) -> _PartFile:
        if self.path.exists():
            self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        if self.fd >= 0:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        except OSError as exc:
            raise self._disk_error(exc) from None

    async def close(self) -> None:
        if self.fd < 0:
            return
        if self._pending is not None:  # a cancel interrupted the wait for it: the thread may still use the fd
            await _outlive(self._pending)
        os.close(self.fd)
        self.fd = -1

    def _new_hash(self) -> Any:
        if self.kind == "sha1":
            return hashlib.sha1(b"blob %d\0" % self.expected_size)  # git's blob id: a header, then the bytes
        return hashlib.sha256()

    async def hash_existing(self, on_bytes: Callable[[int], None]) -> None:
        """A resumed .part is hashed from disk first, reporting as it goes; one longer than the file is started
        over."""
        if self.fd < 0:
            return
        size = os.fstat(self.fd).st_size
        if size > self.expected_size:
            log.warning("%s holds %d bytes, more than the %d listed: starting over", self.path, size,
                        self.expected_size)
            await self.truncate()
            return
        loop = asyncio.get_running_loop()
        await self._in_thread(self._hash_from_disk, size, lambda done: loop.call_soon_threadsafe(on_bytes, done))

    def _hash_from_disk(self, size: int, report: Callable[[int], None]) -> None:
        os.lseek(self.fd, 0, os.SEEK_SET)
        left = size
        while left:
            data = os.read(self.fd, min(CHUNK, left))
            if not data:
                break
            self.hash.update(data)
            left -= len(data)
            if (size - left) % HASH_REPORT_BYTES < len(data):
                report(size - left)
        self.size = self._written = self._flushed = size - left
        if left:  # the file shrank under us: keep only what was hashed
            os.ftruncate(self.fd, self.size)
        os.lseek(self.fd, self.size, os.SEEK_SET)

    async def write(self, data: bytes) -> None:
        """Hand `data` to the writer thread, once the write before it has finished."""
        await self.drain()
        self._pending = _WRITERS.submit(self._write, data)
        self.size += len(data)

    def _write(self, data: bytes) -> None:
        self.hash.update(data)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            raise self._disk_error(exc) from None
        self._written += len(data)
        if _FADVISE and self._written - self._flushed >= WRITEBACK_BYTES:
            # Start writing the last stretch back to disk now, so that the final fsync has little left to do
            # (and a file of many GB does not crowd the page cache); it does not wait for the disk.
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.fd, self._flushed, self._written - self._flushed, os.POSIX_FADV_DONTNEED)
            self._flushed = self._written

    async def _in_thread(self, job: Callable[..., None], *args: Any) -> None:
        await self.drain()
        self._pending = _WRITERS.submit(job, *args)
        await self.drain()

    async def drain(self) -> None:
        """Wait for the thread's job in flight; its error (a full disk) is raised here. A cancel leaves it
        pending, so that close() still knows to wait for it."""
        pending = self._pending
        if pending is None:
            return
        try:
            # Shielded: a cancel must not cancel a write still queued for the thread, whose bytes on_bytes has
            # already reported (wrap_future passes a cancel on to the concurrent future).
            await asyncio.shield(asyncio.wrap_future(pending))
        finally:
            if pending.done() and self._pending is pending:
                self._pending = None

    async def truncate(self) -> None:
        await self.drain()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = self._written = self._flushed = 0
        self.hash = self._new_hash()

    def check_hub_hash(self, file: PullFile, headers: dict[str, str]) -> None:
        """The Hub's answer must name the hash the listing gave: otherwise the plan is stale or the Hub lies."""
        linked = _etag_hex(headers.get("X-Linked-Etag", ""))
        etag = _etag_hex(headers.get("ETag", ""))
        if file.sha256 and re.fullmatch(r"[0-9a-f]{64}", linked) and linked != file.sha256.lower():
            raise FetchError(f"the Hub reports sha256 {linked} for {file.path}, but its listing said "
                             f"{file.sha256}: pull again")
        if not file.sha256 and file.sha1 and not linked and re.fullmatch(r"[0-9a-f]{40}", etag) \
                and etag != file.sha1.lower():
            raise FetchError(f"the Hub reports git blob {etag} for {file.path}, but its listing said "
                             f"{file.sha1}: pull again")

    async def finish(self, file: PullFile) -> None:
        """Check the whole file against its hash (deleting it on a mismatch) and fsync it."""
        await self.drain()
        expected = (file.sha256 or file.sha1).lower()
        got = self.hash.hexdigest()
        if (expected and got != expected) or (file.size and self.size != file.size):
            what = f"{self.kind} mismatch" if expected and got != expected else "size mismatch"
            self.path.unlink(missing_ok=True)
            detail = f"expected {expected}, got {got}" if expected and got != expected \
                else f"expected {file.size} bytes, got {self.size}"
            raise HashMismatch(f"{what} for {file.path}: {detail}; the partial file was deleted")
        try:
            await self._in_thread(os.fsync, self.fd)
        except OSError as exc:
            raise self._disk_error(exc) from None

    def _disk_error(self, exc: OSError) -> FetchError:
        if exc.errno in DISK_FULL_ERRNOS:
            return DiskFull(f"disk full while writing {self.name}")
        return FetchError(f"could not write {self.path}: {exc.strerror or exc}")


async def _outlive(job: concurrent.futures.Future[None]) -> None:
    """Wait, without blocking the loop and through any further cancel, until a thread's job has ended (its error
    no longer matters: the fetch is ending); a cancel that came meanwhile is raised afterwards."""
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    job.add_done_callback(lambda _: loop.call_soon_threadsafe(ended.set))
    interrupted = False
    while not ended.is_set():
        try:
            await ended.wait()
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
