"""How every LMForge process starts: one logging format on stderr (supervisord files it), then settings."""

from __future__ import annotations

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


def run_process(name: str, body: Callable[[Settings, Paths], int | None]) -> int:
    """Log setup, settings (exit 2 with the reason when they are invalid), then `body`."""
    setup_logging(name)
    try:
        settings, paths = load_settings()
    except ConfigError as exc:
        print(f"lmforge {name}: {exc}", file=sys.stderr)
        return 2
    return body(settings, paths) or 0
