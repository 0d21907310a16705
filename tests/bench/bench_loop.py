"""The manager loop's worst lag under heavy load: many loads and evictions, streams, and
status readers at once, read from /lf/status (`loop_lag_max_ms`, worst over the last minute).

Load: `--models` tiny chat models with room for half of them (each request for an
unloaded one evicts another), `--streams` concurrent streams from the never-ending
cycle model, `--readers` clients polling /lf/status every `--poll` seconds and as
many following /lf/status/stream, all for `--seconds`. Aim: under 100 ms. The
manager's watchdog logs where its loop was stuck past 250 ms; the report lists it.

Run: python -m tests.bench.bench_loop [--seconds 30] [--models 8] [--streams 16] [--readers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp

from tests.bench.harness import (
    bench_instance, bench_main, finish_machine_info, llama_server_binary, machine_info, machine_line,
    save_results, table, temp_dir,
)
from tests.support.tiny_models import write_chat_model, write_cycle_model

TARGET_MS = 100.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_loop", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--models", type=int, default=8, help="tiny chat models that churn through loads")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams from the cycle model")
    parser.add_argument("--readers", type=int, default=8, help="/lf/status pollers, and as many SSE followers")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between one poller's /lf/status reads")
    return parser.parse_args(argv)


class Load:
    def __init__(self, session: aiohttp.ClientSession, url: str, until: float) -> None:
        self.session, self.url, self.until = session, url, until
        self.counts = {"loads": 0, "streams": 0, "status": 0, "sse_frames": 0, "errors": 0}

    def running(self) -> bool:
        return time.monotonic() < self.until

    async def churn(self, models: list[str], offset: int) -> None:
        i = offset
        while self.running():
            body = {"model": models[i % len(models)], "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
            async with self.session.post(self.url + "/v1/chat/completions", json=body) as resp:
                await resp.read()
                self.counts["loads" if resp.status == 200 else "errors"] += 1
            i += 1

    async def stream(self) -> None:
        body = {"model": "cycle", "stream": True, "max_tokens": 2000, "messages": [{"role": "user", "content": "x"}]}
        while self.running():
            async with self.session.post(self.url + "/v1/chat/completions", json=body) as resp:
                await resp.read()
                self.counts["streams" if resp.status == 200 else "errors"] += 1

    async def poll_status(self, period_s: float) -> None:
        while self.running():
            async with self.session.get(self.url + "/lf/status") as resp:
                await resp.read()
                self.counts["status"] += 1
            await asyncio.sleep(period_s)  # a dashboard's refresh period, not synchronisation

    async def follow(self) -> None:
        async with self.session.get(self.url + "/lf/status/stream") as resp:
            while self.running():
                try:
                    await asyncio.wait_for(resp.content.readuntil(b"\n\n"), max(0.1, self.until - time.monotonic()))
                except asyncio.TimeoutError:
                    return
                self.counts["sse_frames"] += 1


async def sample_lag(session: aiohttp.ClientSession, url: str, load: Load, samples: list[float]) -> None:
    while load.running():
        async with session.get(url + "/lf/status") as resp:
            samples.append((await resp.json())["loop_lag_max_ms"])
        await asyncio.sleep(1.0)  # sampling period of the report, not synchronisation


async def run(args: argparse.Namespace) -> None:
    llama_server_binary()
    info = machine_info(llama_server_binary())
    with temp_dir("lmforge-bench-loop-") as tmp:
        chat = write_chat_model(tmp / "chat.gguf")
        models = {f"churn{i}": chat for i in range(args.models)} | {"cycle": write_cycle_model(tmp / "cycle.gguf")}
        config = f"max_loaded_models = {max(2, args.models // 2) + 1}\n"
        with bench_instance(tmp / "home", models, config) as inst:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                idle: list[float] = []
                async with session.get(inst.url + "/lf/status") as resp:
                    idle.append((await resp.json())["loop_lag_max_ms"])
                load = Load(session, inst.url, time.monotonic() + args.seconds)
                samples: list[float] = []
                churn = [f"churn{i}" for i in range(args.models)]
                tasks = [load.churn(churn, k) for k in range(4)] + [load.stream() for _ in range(args.streams)]
                tasks += [load.poll_status(args.poll) for _ in range(args.readers)] + [load.follow() for _ in range(args.readers)]
                await asyncio.gather(sample_lag(session, inst.url, load, samples), *tasks)
                async with session.get(inst.url + "/lf/status") as resp:
                    final = (await resp.json())["loop_lag_max_ms"]
                log = inst.log("manager")
                stalls = [part.split("\n20", 1)[0] for part in log.split("stuck for over")[1:]]
    worst = max([*samples, final])
    text = "\n\n".join([
        machine_line(finish_machine_info(info)),
        f"Manager loop lag under load for {args.seconds:.0f} s (worst over the last minute, as /lf/status shows it)",
        table(["idle before (ms)", "worst under load (ms)", "median of per-second readings (ms)", "target (ms)", "met"],
              [[f"{idle[0]:.1f}", f"{worst:.1f}", f"{sorted(samples)[len(samples) // 2]:.1f}" if samples else "-",
                f"{TARGET_MS:.0f}", "yes" if worst < TARGET_MS else "no"]]),
        "Work done: " + ", ".join(f"{k} {v}" for k, v in load.counts.items()),
        f"Stalls the manager's watchdog logged (over 250 ms): {len(stalls)}",
        *stalls,
    ])
    print(text)
    path = save_results("bench_loop", {"machine": info, "args": vars(args), "samples_ms": samples,
                                       "worst_ms": worst, "counts": load.counts, "stalls": stalls,
                                       "report": text})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    sys.exit(bench_main("bench_loop", lambda argv: run(parse_args(argv)), sys.argv[1:]))
