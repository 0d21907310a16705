"""The settings a running manager takes from config.toml without a restart: the cores' (`cpu_*`).

A policy change must restart idle engines only, never one with requests in flight,
and a manager restart would stop them all. So the manager looks at config.toml about
every CHECK_S seconds; when it changed and still reads as valid, the `cpu_*` keys are
applied to the table at once, and the table restarts each idle engine whose thread
count they change (cores.py). Every other key still needs `lmforge restart`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from manager.config import ConfigError, Settings, load_settings

log = logging.getLogger("lmforge.manager")

CHECK_S = 2.0
LIVE_KEYS = ("cpu_policy", "cpu_cores", "cpu_shared_engines", "cpu_fair_share_s")


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
    changes = {key: getattr(read, key) for key in LIVE_KEYS if getattr(read, key) != getattr(current, key)}
    lines = [f"{key}: {getattr(current, key)!r} → {value!r}" for key, value in changes.items()]
    return (msgspec.structs.replace(current, **changes) if changes else current), lines
