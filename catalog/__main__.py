"""`python -m catalog`: run the downloader process."""

from __future__ import annotations

import asyncio
import sys

from catalog.downloader import DownloaderService
from manager.startup import run_process

if __name__ == "__main__":
    sys.exit(run_process("downloader", lambda settings, paths: asyncio.run(DownloaderService(settings, paths).run())))
