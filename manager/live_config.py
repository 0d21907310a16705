"""The settings a running manager takes from config.toml without a restart: LIVE_KEYS (config_keys.py).

A manager restart would stop every engine, so the manager looks at config.toml
about every CHECK_S seconds; when it changed and still reads as valid, its live
keys (the cores', keep_alive, the budget's, the queues'...) are applied to the
table at once. A cores' change restarts idle engines whose thread count it
changes, never one with requests in flight (cores.py). Every other key needs a
restart of LMForge.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from manager.config import ConfigError, Settings, load_settings
from manager.config_keys import LIVE, Applies, take

log = logging.getLogger("lmforge.manager")

CHECK_S = 2.0
LIVE_KEYS = tuple(key for key, where in LIVE.items() if where & Applies.MANAGER)


class ConfigWatch:
    """Notices a change of one file by its size, modification time and inode (an editor that saves by renaming
    a new file over it may keep the other two), as the model store notices a new index (catalog/store.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def changed(self) -> bool:
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return True


def read_live(home: Path) -> Settings | ConfigError:
    """The whole file read and validated again (blocking: run it off the loop); its error when it is invalid."""
    try:
        return load_settings(home)[0]
    except ConfigError as exc:
        return exc


def apply_live(current: Settings, read: Settings) -> tuple[Settings, list[str]]:
    """`current` with the live keys taken from `read`, and a line per key that changed."""
    applied, keys = take(current, read, Applies.MANAGER)
    return applied, [f"{key}: {getattr(current, key)!r} → {getattr(applied, key)!r}" for key in keys]
