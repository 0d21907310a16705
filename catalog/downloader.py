"""DownloaderService: the supervised process that will run model pulls.

For now it registers with the manager and stays connected across manager
restarts; pull jobs (huggingface_hub, sha256 verification, progress) arrive with
the catalog work.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from manager.client import ManagerClient
from manager.config import Paths
from manager.protocol import PeerRole

log = logging.getLogger("lmforge.downloader")


class DownloaderService:
    def __init__(self, paths: Paths) -> None:
        self.client = ManagerClient(paths, PeerRole.DOWNLOADER)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        await self.client.start(wait=5.0, required=False)
        log.info("downloader ready")
        await self._stop.wait()
        log.info("[shutdown] downloader: closing")
        await self.client.close()
