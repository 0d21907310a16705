"""One logging setup for every LMForge process: plain lines on stderr, which supervisord files."""

from __future__ import annotations

import logging
import os


def setup_logging(name: str) -> None:
    level = os.environ.get("LMFORGE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s %(levelname)s {name}[%(process)d] %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
