"""LocalHub: a Hugging Face Hub-compatible server for tests, with faults to inject.

Hugging Face is unreachable here, so the real `huggingface_hub` client and LMForge's downloader
talk to this one instead (HF_ENDPOINT=hub.url). It serves the model API (info, tree), `/resolve`
with the Hub's redirect and hash headers, and a ranged CDN; it runs in a thread of its own so
sync tests and LMForge subprocesses alike can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple
from urllib.parse import quote, unquote, urlencode

from aiohttp import web

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")
LFS_MIN_BYTES = 1024
CHUNK = 256 * 1024
LAST_MODIFIED = "2025-01-01T00:00:00.000Z"


class HubRequest(NamedTuple):
    method: str
    path: str
    range: str | None


@dataclass(frozen=True)
class HubFile:
    """One file of a revision; `source` None means listed but never served (a bogus listing)."""

    path: str
    size: int
    sha256: str
    blob_id: str  # the git oid of what git holds: the file itself, or its LFS pointer
    lfs: bool
    pointer_size: int
    source: bytes | Path | None

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """The bytes [start, end) in pieces of at most CHUNK."""
        if isinstance(self.source, bytes):
            view = memoryview(self.source)
            for at in range(start, end, CHUNK):
                yield bytes(view[at:min(at + CHUNK, end)])
            return
        assert self.source is not None
        with open(self.source, "rb") as f:
            f.seek(start)
            at = start
            while at < end:
                piece = f.read(min(CHUNK, end - at))
                if not piece:
                    return
                at += len(piece)
                yield piece


@dataclass
class Revision:
    name: str
    commit: str
    files: dict[str, HubFile] = field(default_factory=dict)


class Pause(threading.Event):
    """Set it to let a paused GET go on; `reached` is set once the GET has sent everything before `offset`."""

    def __init__(self, offset: int) -> None:
        super().__init__()
        self.offset = offset
        self.reached = threading.Event()


def git_blob_sha1(data: bytes) -> str:
    """The git oid of a blob: what the Hub puts in ETag for a file kept in git (not LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hub_file(path: str, content: bytes | Path) -> HubFile:
    """A HubFile with the hashes the Hub would report for `content`."""
    sha256, blob = hashlib.sha256(), hashlib.sha1()
    if isinstance(content, bytes):
        size = len(content)
        sha256.update(content)
        blob.update(b"blob %d\0" % size + content)
    else:
        size = content.stat().st_size
        blob.update(b"blob %d\0" % size)
        with open(content, "rb") as f:
            while piece := f.read(CHUNK):
                sha256.update(piece)
                blob.update(piece)
    lfs = size > LFS_MIN_BYTES or path.endswith(LFS_SUFFIXES)
    if not lfs:
        return HubFile(path, size, sha256.hexdigest(), blob.hexdigest(), False, 0, content)
    pointer = lfs_pointer(sha256.hexdigest(), size)
    return HubFile(path, size, sha256.hexdigest(), git_blob_sha1(pointer), True, len(pointer), content)


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class LocalHub:
    """The server, its repos, its faults and its request log; start() before use, stop() after."""

    def __init__(self, cdn_host: str = "127.0.0.1") -> None:
        self.cdn_host = cdn_host  # "localhost" makes the CDN another origin, as it is on the real Hub
        self.repos: dict[str, dict[str, Revision]] = {}
        self.requests: list[HubRequest] = []
        self.authorizations: list[str] = []
        self._served: dict[str, int] = {}
        self._file_gets: list[tuple[str, str | None]] = []
        self._cuts: dict[str, int] = {}
        self._corrupt: dict[str, int] = {}
        self._pauses: dict[str, Pause] = {}
        self._every_pause: list[Pause] = []  # armed or taken: stop() releases them all
        self.relative_redirects = False  # small files: 307 to /api/resolve-cache/..., as huggingface.co does now
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- content -------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes | Path], revision: str = "main") -> str:
        """Publish `files` as `revision` of `repo_id`; returns that revision's (fake) commit sha."""
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        rev = Revision(revision, commit, {path: hub_file(path, content) for path, content in files.items()})
        with self._lock:
            self.repos.setdefault(repo_id, {})[revision] = rev
        return commit

    def list_bogus(self, repo_id: str, path: str, size: int, sha256: str = "0" * 64, revision: str = "main") -> None:
        """List a file that is never served (e.g. `../../x`), to test what a client does with a hostile listing."""
        pointer = lfs_pointer(sha256, size)
        bogus = HubFile(path, size, sha256, git_blob_sha1(pointer), True, len(pointer), None)
        with self._lock:
            self.repos[repo_id][revision].files[path] = bogus

    def commit(self, repo_id: str, revision: str = "main") -> str:
        return self.repos[repo_id][revision].commit

    def file(self, repo_id: str, path: str, revision: str = "main") -> HubFile:
        return self.repos[repo_id][revision].files[path]

    # --- faults and observations -----------------------------------------------------------

    def cut_once(self, path: str, after_bytes: int) -> None:
        """The next GET of `path` sends `after_bytes` of body, then the connection drops."""
        with self._lock:
            self._cuts[path] = after_bytes

    def corrupt(self, path: str, offset: int) -> None:
        """Every GET of `path` serves the byte at `offset` flipped; listings and etags keep the true hash."""
        with self._lock:
            self._corrupt[path] = offset

    def pause_at(self, path: str, offset: int) -> Pause:
        """The next GET of `path` whose range holds `offset` stalls once it has sent every byte before it, until
        the event is set."""
        pause = Pause(offset)
        with self._lock:
            self._pauses[path] = pause
            self._every_pause.append(pause)
        return pause

    def clear_faults(self) -> None:
        """Disarm every fault and let every paused GET go on."""
        with self._lock:
            self._cuts.clear()
            self._corrupt.clear()
            self._pauses.clear()
            self.relative_redirects = False
            pauses, self._every_pause = self._every_pause, []
        for pause in pauses:
            pause.set()

    def bytes_served(self, path: str) -> int:
        """Body bytes sent for `path` (a repo file path, or `owner/repo/path`) over all GETs."""
        return self._served.get(path, 0)

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of each GET that served `path`'s bytes, in order (None: no Range)."""
        return [rng for served, rng in self._file_gets if path == served or served.endswith("/" + path)]

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> "LocalHub":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(sock, ready), name="local-hub", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the local hub did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self.clear_faults()
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
        ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- routing ---------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path
        self.requests.append(HubRequest(request.method, unquote(raw), request.headers.get("Range")))
        if auth := request.headers.get("Authorization"):
            self.authorizations.append(auth)
        parts = raw.strip("/").split("/")
        if request.method not in ("GET", "HEAD"):
            return _error(405, "", f"{request.method} is not served here")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = unquote(parts[2]) + "/" + unquote(parts[3])
            rest = parts[4:]
            if not rest:
                return self._info(request, repo_id, None)
            if rest[0] == "revision" and len(rest) == 2:
                return self._info(request, repo_id, unquote(rest[1]))
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(request, repo_id, unquote(rest[1]), unquote("/".join(rest[2:])))
        if parts[:3] == ["api", "resolve-cache", "models"] and len(parts) >= 7:
            repo_id = unquote(parts[3]) + "/" + unquote(parts[4])
            return await self._resolve(request, repo_id, unquote(parts[5]), unquote("/".join(parts[6:])), cached=True)
        if parts[0] == "cdn" and len(parts) == 2:
            return await self._cdn(request, parts[1])
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = unquote(parts[0]) + "/" + unquote(parts[1])
            return await self._resolve(request, repo_id, unquote(parts[3]), unquote("/".join(parts[4:])))
        return _error(404, "", f"no route for {unquote(raw)}")

    def _revision(self, repo_id: str, revision: str | None) -> tuple[str, Revision] | web.Response:
        with self._lock:
            found = next(((rid, revs) for rid, revs in self.repos.items() if rid.lower() == repo_id.lower()), None)
            if found is None:
                return _error(404, "RepoNotFound", f"Repository {repo_id} not found")
            rid, revs = found
            wanted = revision or "main"
            for rev in revs.values():
                if wanted in (rev.name, rev.commit):
                    return rid, rev
        return _error(404, "RevisionNotFound", f"Invalid rev id: {wanted}")

    def _info(self, request: web.Request, repo_id: str, revision: str | None) -> web.Response:
        found = self._revision(repo_id, revision)
        if isinstance(found, web.Response):
            return found
        rid, rev = found
        blobs = request.query.get("blobs", "").lower() in ("true", "1")
        siblings = [_sibling(f, blobs) for f in sorted(rev.files.values(), key=lambda f: f.path)]
        owner = rid.split("/")[0]
        return web.json_response({
            "_id": rev.commit[:24], "id": rid, "modelId": rid, "author": owner, "sha": rev.commit,
            "lastModified": LAST_MODIFIED, "createdAt": LAST_MODIFIED, "private": False, "disabled": False,
            "gated": False, "downloads": 0, "likes": 0, "tags": ["gguf"], "siblings": siblings,
            "usedStorage": sum(f.size for f in rev.files.values()),
        }, headers={"X-Repo-Commit": rev.commit})

    def _tree(self, request: web.Request, repo_id: str, revision: str, base: str) -> web.Response:
        found = self._revision(repo_id, revision)
        if isinstance(found, web.Response):
            return found
        _, rev = found
        recursive = request.query.get("recursive", "").lower() in ("true", "1")
        base = base.strip("/")
        prefix = base + "/" if base else ""
        files = [f for p, f in sorted(rev.files.items()) if p.startswith(prefix)]
        if base and not files:
            return _error(404, "EntryNotFound", f"{base} does not exist on {revision}")
        entries: list[dict] = []
        folders: set[str] = set()
        for f in files:
            rest = f.path[len(prefix):].split("/")
            depth = len(rest) if recursive else 1
            for i in range(1, min(depth, len(rest) - 1) + 1):
                folder = prefix + "/".join(rest[:i])
                if folder not in folders:
                    folders.add(folder)
                    oid = hashlib.sha1(f"tree {rev.commit} {folder}".encode()).hexdigest()
                    entries.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
            if recursive or len(rest) == 1:
                entries.append(_tree_file(f))
        return web.json_response(entries)

    async def _resolve(self, request: web.Request, repo_id: str, revision: str, path: str,
                       cached: bool = False) -> web.StreamResponse:
        found = self._revision(repo_id, revision)
        if isinstance(found, web.Response):
            return found
        rid, rev = found
        f = rev.files.get(path)
        if f is None or f.source is None:
            return _error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        headers = {"X-Repo-Commit": rev.commit, "ETag": f'"{f.blob_id}"', "Accept-Ranges": "bytes"}
        if not f.lfs and self.relative_redirects and not cached:
            headers["Location"] = f"/api/resolve-cache/models/{rid}/{rev.commit}/{quote(f.path)}"
            return web.Response(status=307, headers=headers)
        if not f.lfs:
            return await self._send(request, rid, f, headers)
        query = urlencode({"repo": rid, "path": f.path, "commit": rev.commit})
        location = f"http://{self.cdn_host}:{self._port}/cdn/{f.sha256}?{query}"
        headers.update({"Location": location, "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
        return web.Response(status=302, headers=headers)

    async def _cdn(self, request: web.Request, sha256: str) -> web.StreamResponse:
        repo_id, path = request.query.get("repo", ""), request.query.get("path", "")
        with self._lock:
            candidates = [(rid, rev.commit, f) for rid, revs in self.repos.items() for rev in revs.values()
                          for f in rev.files.values() if f.sha256 == sha256 and f.source is not None]
        if not candidates:
            return web.Response(status=404, text="NoSuchKey")
        rid, commit, f = next((c for c in candidates if (c[0], c[2].path) == (repo_id, path)), candidates[0])
        headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes", "X-Repo-Commit": commit}
        return await self._send(request, rid, f, headers)

    # --- serving bytes ---------------------------------------------------------------------

    async def _send(self, request: web.Request, repo_id: str, f: HubFile, headers: dict[str, str]) -> web.StreamResponse:
        """Serve `f` whole or from a `Range: bytes=N-[M]`, with whatever fault is armed for it."""
        span = _range(request.headers.get("Range"), f.size)
        if span is None:
            headers["Content-Range"] = f"bytes */{f.size}"
            return web.Response(status=416, headers=headers)
        start, end = span
        status = 200
        if request.headers.get("Range"):
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_type = "application/octet-stream"
        resp.content_length = end - start
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        keys = (f.path, f"{repo_id}/{f.path}")
        with self._lock:
            cut = _take(self._cuts, keys)
            pause = _take(self._pauses, keys, lambda p: start <= p.offset <= end)
            flip = next((self._corrupt[k] for k in keys if k in self._corrupt), None)
        self._file_gets.append((f"{repo_id}/{f.path}", request.headers.get("Range")))
        sent, at = 0, start
        for piece in f.chunks(start, end):
            if pause is not None and at <= pause.offset < at + len(piece):
                await self._write(resp, repo_id, f, piece[:pause.offset - at])
                sent += pause.offset - at
                piece, at = piece[pause.offset - at:], pause.offset
                pause.reached.set()
                await asyncio.get_running_loop().run_in_executor(None, pause.wait)
                pause = None
            if flip is not None and at <= flip < at + len(piece):
                piece = piece[:flip - at] + bytes([piece[flip - at] ^ 0xFF]) + piece[flip - at + 1:]
            if cut is not None and sent + len(piece) >= cut:
                await self._write(resp, repo_id, f, piece[:cut - sent])
                _drop(request)
                return resp
            await self._write(resp, repo_id, f, piece)
            sent += len(piece)
            at += len(piece)
        if pause is not None:  # paused at the very end of the file
            pause.reached.set()
            await asyncio.get_running_loop().run_in_executor(None, pause.wait)
        await resp.write_eof()
        return resp

    async def _write(self, resp: web.StreamResponse, repo_id: str, f: HubFile, piece: bytes) -> None:
        if not piece:
            return
        await resp.write(piece)
        for key in (f.path, f"{repo_id}/{f.path}"):
            self._served[key] = self._served.get(key, 0) + len(piece)


def _take(faults: dict, keys: tuple[str, ...], applies=lambda fault: True):  # type: ignore[no-untyped-def]
    """Disarm and return the fault armed for any of `keys`, if it applies to this GET (else it stays armed)."""
    for key in keys:
        if key in faults and applies(faults[key]):
            return faults.pop(key)
    return None


def _drop(request: web.Request) -> None:
    """End the connection mid-body: the client sees fewer bytes than Content-Length said."""
    if request.transport is not None:
        request.transport.close()


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) for a `bytes=N-` or `bytes=N-M` header (the whole file without one); None: unsatisfiable."""
    if not header:
        return 0, size
    unit, _, spec = header.partition("=")
    first, _, last = spec.partition("-")
    if unit.strip() != "bytes" or not first.strip().isdigit():
        return None
    start = int(first)
    end = min(int(last) + 1, size) if last.strip().isdigit() else size
    if start >= size or start >= end:
        return None
    return start, end


def _sibling(f: HubFile, blobs: bool) -> dict:
    if not blobs:
        return {"rfilename": f.path}
    entry: dict = {"rfilename": f.path, "size": f.size, "blobId": f.blob_id}
    if f.lfs:
        entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
    return entry


def _tree_file(f: HubFile) -> dict:
    entry: dict = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
    if f.lfs:
        entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
    return entry


def _error(status: int, code: str, message: str) -> web.Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=headers)


def resolve_url(hub: LocalHub, repo_id: str, path: str, revision: str = "main") -> str:
    """The URL the Hub's clients build for a file (as huggingface_hub.hf_hub_url does)."""
    return f"{hub.url}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"


@contextlib.contextmanager
def running_hub(cdn_host: str = "127.0.0.1") -> Iterator[LocalHub]:
    """A started LocalHub, stopped on the way out."""
    hub = LocalHub(cdn_host).start()
    try:
        yield hub
    finally:
        hub.stop()
