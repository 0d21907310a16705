"""One fetch per staged file, however many pulls need it: two names for the same files (a catalog shortcut and
its Hub name) download once. A pull that leaves stops the fetch only when no other pull still waits for it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable

from catalog.fetch import Cancelled

log = logging.getLogger("lmforge.downloader")

Start = Callable[[asyncio.Event, Callable[..., None]], Awaitable[None]]


class _SharedFetch:
    """One fetch of one staged path, however many jobs wait for it; stopped when the last of them leaves."""

    def __init__(self, start: Start) -> None:
        self.cancel = asyncio.Event()
        self.listeners: set[Callable[..., None]] = set()
        self.last: dict[Any, tuple[Any, ...]] = {}  # what each file last reported, for a job that joins late
        self.waiters = 0
        self.task = asyncio.get_running_loop().create_task(start(self.cancel, self._report))

    def _report(self, *progress: Any) -> None:
        self.last[progress[0] if len(progress) > 1 else None] = progress
        for listener in list(self.listeners):
            listener(*progress)


INFLIGHT: dict[Path, _SharedFetch] = {}


async def shared_fetch(key: Path, start: Start, on_progress: Callable[..., None], cancelled: asyncio.Event) -> None:
    """Run `start(cancel, report)` for `key`, or wait for the run already under way and share its result. A job's
    cancel stops the fetch only when no other job waits for it; its .part stays either way."""
    while (shared := INFLIGHT.get(key)) is not None and shared.cancel.is_set():
        await asyncio.wait([shared.task])  # on its way out after a cancel: start afresh once it has stopped
    if shared is None:
        shared = INFLIGHT[key] = _SharedFetch(start)
        shared.task.add_done_callback(functools.partial(_forget, key, shared))
    else:
        log.info("%s is already being fetched for another pull: sharing it", key.name)
    shared.waiters += 1
    shared.listeners.add(on_progress)
    for progress in shared.last.values():
        on_progress(*progress)
    stop = asyncio.get_running_loop().create_task(cancelled.wait())
    try:
        await asyncio.wait([shared.task, stop], return_when=asyncio.FIRST_COMPLETED)
        if not shared.task.done():
            raise Cancelled(f"cancelled while fetching {key.name}")
        shared.task.result()
    finally:
        stop.cancel()
        shared.waiters -= 1
        shared.listeners.discard(on_progress)
        if shared.waiters == 0 and not shared.task.done():
            shared.cancel.set()


def _forget(key: Path, shared: _SharedFetch, task: asyncio.Task[None]) -> None:
    if INFLIGHT.get(key) is shared:
        del INFLIGHT[key]
    if not task.cancelled():
        task.exception()  # retrieved here: a fetch whose jobs all left is not an unhandled error
