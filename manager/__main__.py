"""`python -m manager`: run the manager until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from manager.config import ConfigError, load_settings
from manager.logs import setup_logging
from manager.service import ManagerService


def main() -> int:
    setup_logging("manager")
    try:
        settings, paths = load_settings()
    except ConfigError as exc:
        print(f"lmforge manager: {exc}", file=sys.stderr)
        return 2
    asyncio.run(ManagerService(settings, paths).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
