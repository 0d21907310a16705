"""Download throughput of catalog/fetch.py (hashing and writing as it goes) against plain `curl` of the same
file from the same local Hub, interleaved. The hub runs in a process of its own, so that neither side shares
its interpreter with the server.

Run: python -m tests.bench.bench_pull [--mb 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from catalog.fetch import Source, fetch_file, new_session
from manager.protocol import PullFile
from tests.bench.harness import (
    BenchError, bench_main, finish_machine_info, machine_info, machine_line, save_results, table, temp_dir,
)
from tests.support.hub import hub_file, resolve_url

REPO = "bench/Pull-GGUF"
FILE = "bench-Q4_K_M.gguf"
OURS, CURL, CURL_FSYNC = "lmforge fetch (sha256 + fsync)", "curl -sL -o", "curl -sL -o, then fsync"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_pull", description=__doc__)
    parser.add_argument("--mb", type=int, default=200, help="size of the file served, in MB")
    parser.add_argument("--rounds", type=int, default=3, help="downloads per side")
    return parser.parse_args(argv)


def serve(path: str) -> None:
    """The hub's own process: print its URL, serve until stdin closes."""
    from tests.support.hub import running_hub

    with running_hub() as hub:
        hub.add_repo(REPO, {FILE: Path(path)})
        print(hub.url, flush=True)
        sys.stdin.read()


def write_file(path: Path, mb: int) -> None:
    block = os.urandom(1024 * 1024)  # incompressible, and no two MiB alike in position
    with open(path, "wb") as f:
        for i in range(mb):
            f.write(i.to_bytes(8, "little") + block[8:])


async def ours(url: str, file: PullFile, out: Path) -> float:
    out.unlink(missing_ok=True)
    async with new_session() as session:
        began = time.perf_counter()
        await fetch_file(session, Source(url, REPO, "main"), file, out, on_bytes=lambda n: None,
                         cancelled=asyncio.Event())
        return time.perf_counter() - began


async def curl(url: str, out: Path, fsync: bool = False) -> float:
    out.unlink(missing_ok=True)
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("curl", "-sfL", "-o", str(out), url)
    if await proc.wait():
        raise BenchError(f"curl failed with exit status {proc.returncode}")
    if fsync:  # what ours does before a file may be moved into the store
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - began


async def run(argv: list[str]) -> None:
    args = parse_args(argv)
    info = machine_info("")
    with temp_dir("bench-pull") as tmp:
        source = tmp / FILE
        write_file(source, args.mb)
        hubbed = hub_file(FILE, source)
        file = PullFile(path=FILE, size=hubbed.size, sha256=hubbed.sha256)
        server = subprocess.Popen([sys.executable, "-m", "tests.bench.bench_pull", "--serve", str(source)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if not url:
                raise BenchError("the hub process did not start")
            times: dict[str, list[float]] = {OURS: [], CURL: [], CURL_FSYNC: []}
            plain = resolve_url(_Url(url), REPO, FILE)
            for i in range(args.rounds):  # interleaved, rotating who goes first
                sides = [(OURS, ours(url, file, tmp / "ours.part")), (CURL, curl(plain, tmp / "curl.out")),
                         (CURL_FSYNC, curl(plain, tmp / "curl.out", fsync=True))]
                for name, side in sides[i % 3:] + sides[:i % 3]:
                    times[name].append(await side)
                    # Untimed: the disk's writeback of one side must not land on the next side's clock.
                    await asyncio.to_thread(os.sync)
            if (tmp / "curl.out").stat().st_size != hubbed.size:
                raise BenchError("curl's copy is not the whole file")
        finally:
            server.communicate(timeout=30)
    mb = hubbed.size / 1e6
    rows, rates = [], {}
    for name, samples in times.items():
        rates[name] = mb / statistics.median(samples)
        rows.append([name, f"{mb / max(samples):.0f}", f"{rates[name]:.0f}", f"{mb / min(samples):.0f}"])
    ratio = rates[OURS] / rates[CURL]
    finish_machine_info(info)
    print(f"{args.mb} MB file from the local hub (302 to its CDN route), {args.rounds} rounds per side")
    print(table(["side", "MB/s worst", "MB/s median", "MB/s best"], rows))
    print(f"ratio lmforge / curl (medians): {ratio:.2f}; against curl + fsync: {rates[OURS] / rates[CURL_FSYNC]:.2f}")
    print(machine_line(info))
    saved = save_results("bench_pull", {"machine": info, "mb": args.mb, "seconds": times, "ratio": ratio})
    print(f"saved {saved}")


class _Url:
    """resolve_url takes a hub; here only its URL lives in this process."""

    def __init__(self, url: str) -> None:
        self.url = url


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        sys.exit(bench_main("bench_pull", run, sys.argv[1:]))
