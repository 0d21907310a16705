"""How every LMForge process starts: one logging format on stderr (supervisord files it), then settings."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Callable

from manager.config import ConfigError, Paths, Settings, load_settings


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


def run_process(name: str, body: Callable[[Settings, Paths], int | None]) -> int:
    """Log setup, settings (exit 2 with the reason when they are invalid), then `body`."""
    setup_logging(name)
    use_fast_event_loop()
    try:
        settings, paths = load_settings()
    except ConfigError as exc:
        print(f"lmforge {name}: {exc}", file=sys.stderr)
        return 2
    return body(settings, paths) or 0
