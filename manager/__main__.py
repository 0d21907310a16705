"""`python -m manager`: run the manager until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from manager.service import ManagerService
from manager.startup import run_process

if __name__ == "__main__":
    sys.exit(run_process("manager", lambda settings, paths: asyncio.run(ManagerService(settings, paths).run())))
