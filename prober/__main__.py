"""`python -m prober`: the prober process under supervisord.

`--once` prints one snapshot as JSON and exits (for `lmforge doctor`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import msgspec

from manager.config import Paths
from manager.startup import run_process
from prober.detect import take_snapshot
from prober.service import ProberService



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prober", description=__doc__)
    parser.add_argument("--once", action="store_true", help="print one snapshot as JSON and exit")
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between live refreshes (default 2)"
    )
    args = parser.parse_args(argv)
    if args.once:
        text = msgspec.json.format(msgspec.json.encode(take_snapshot()), indent=2)
        sys.stdout.write(text.decode() + "\n")
        return 0
    return run_process("prober", lambda _settings, paths: asyncio.run(_serve(paths, args.interval)))


async def _serve(paths: Paths, interval_s: float) -> None:
    service = ProberService(paths, interval_s)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, service.stop, f"{sig.name} received")
        except NotImplementedError:
            # Windows event loops have no signal handlers; Ctrl+C then cancels
            # asyncio.run(), which still runs the service's cleanup.
            pass
    await service.run()


if __name__ == "__main__":
    sys.exit(main())
