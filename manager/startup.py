"""How every LMForge process starts: one logging format on stderr (supervisord files it), settings, and a
watch on the parent so that no program outlives the supervisord that started it."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

from manager.config import ConfigError, Paths, Settings, load_settings
from manager.process import kill_group

log = logging.getLogger("lmforge.startup")

PARENT_POLL_S = 1.0
_watcher: threading.Thread | None = None


def setup_logging(name: str) -> None:
    level = os.environ.get("LMFORGE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s %(levelname)s {name}[%(process)d] %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def use_fast_event_loop() -> None:
    """uvloop where it is installed: it roughly halves the gateway's CPU per relayed chunk."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def terminate_self() -> None:
    """Take the process's own graceful SIGTERM path, as if supervisord had asked."""
    os.kill(os.getpid(), signal.SIGTERM)


def watch_parent(
    on_gone: Callable[[], None] = terminate_self, interval_s: float = PARENT_POLL_S
) -> threading.Thread | None:
    """Call `on_gone` once when the parent this process started under is gone.

    supervisord killed with SIGKILL cannot stop its programs, and nothing tells
    them, so each one polls its parent pid and stops itself. A thread, not a
    task, so it works under any event loop (or none) and sees a loop that is
    stuck. Not started when the parent is already init (nothing to outlive), and
    started once per process: a second call returns the first watcher.
    """
    global _watcher
    parent = os.getppid()
    if _watcher is not None or parent == 1:
        return _watcher

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)  # poll: no portable signal tells a process its parent died
        log.warning("[shutdown] parent process %d is gone; stopping", parent)
        on_gone()

    _watcher = threading.Thread(target=watch, name="parent-watch", daemon=True)
    _watcher.start()
    return _watcher


def run_process(name: str, body: Callable[[Settings, Paths], int | None]) -> int:
    """Log setup, settings (exit 2 with the reason when they are invalid), then `body`."""
    setup_logging(name)
    use_fast_event_loop()
    try:
        settings, paths = load_settings()
    except ConfigError as exc:
        print(f"lmforge {name}: {exc}", file=sys.stderr)
        return 2
    watch_parent(functools.partial(_lmforge_gone, name, paths))
    return body(settings, paths) or 0


def _lmforge_gone(name: str, paths: Paths) -> None:
    """supervisord is gone, so LMForge is: stop. A manager stops its own engines on the way out;
    the other programs stop the engines of a manager that died with no one to restart it."""
    if name != "manager":
        from deploy import orphans  # deploy builds on manager: imported only when it is needed

        if not any(found.name == "manager" for found in orphans.find_programs(paths)):
            for engine in orphans.find_engines(paths):
                log.warning("[shutdown] no manager is left: killing its engine pid %d", engine.pid)
                kill_group(engine.pid)
    terminate_self()
