"""LiveSettings: the settings in force in the gateway, which take the gateway's live keys (manager/config_keys.py)
from config.toml as it changes, at once on PATCH /lf/config and within CHECK_S of any other edit.

aiohttp freezes the application once it serves, so app[SETTINGS] keeps what the
gateway started with; middlewares and handlers read `current`, or a view built
from it (parsed networks, key digests, host and origin rules) once per change,
never per request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, TypeVar

from manager.config import ConfigError, Paths, Settings
from manager.config_keys import Applies, take
from manager.live_config import CHECK_S, ConfigWatch, read_live

log = logging.getLogger("lmforge.gateway")

T = TypeVar("T")


class LiveSettings:
    def __init__(self, started: Settings) -> None:
        self.started = self.current = started
        # One change of config.toml at a time, from its read to its apply: two PATCHes merge one after the
        # other, and the watch never applies a file older than one a PATCH has just applied.
        self.lock = asyncio.Lock()
        self._views: dict[Callable[[Settings], object], object] = {}

    def apply(self, read: Settings) -> list[str]:
        """Take the gateway's live keys from `read` (config.toml with the environment); the keys that changed."""
        self.current, keys = take(self.current, read, Applies.GATEWAY)
        if keys:
            self._views.clear()
        return keys

    def view(self, build: Callable[[Settings], T]) -> T:
        """`build(current)`, built once per change of the settings (`build` is a module-level function)."""
        try:
            return self._views[build]  # type: ignore[return-value]
        except KeyError:
            made = self._views[build] = build(self.current)
            return made


async def follow(live: LiveSettings, paths: Paths) -> None:
    """Apply config.toml's gateway keys whenever the file changes (an editor, `lmforge config edit`), as the
    manager does for its own (manager/live_config.py). Runs until cancelled."""
    watch = ConfigWatch(paths.config)
    while True:
        await asyncio.sleep(CHECK_S)  # a timer: the file's stamp is compared, never read, between changes
        if not watch.changed():
            continue
        async with live.lock:
            read = await asyncio.to_thread(read_live, paths.home)
            if isinstance(read, ConfigError):
                log.warning("config.toml changed but cannot be used, nothing applied: %s", read)
                continue
            if keys := live.apply(read):
                log.info("config.toml changed; the gateway applied: %s", ", ".join(keys))
