"""`python -m catalog`: run the downloader process."""

from __future__ import annotations

import asyncio
import sys

from catalog.downloader import DownloaderService
from manager.config import ConfigError, load_settings
from manager.logs import setup_logging


def main() -> int:
    setup_logging("downloader")
    try:
        _, paths = load_settings()
    except ConfigError as exc:
        print(f"lmforge downloader: {exc}", file=sys.stderr)
        return 2
    asyncio.run(DownloaderService(paths).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
