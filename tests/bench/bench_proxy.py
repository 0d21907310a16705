"""What the gateway adds over the same llama-server reached directly: time to first
token (p50/p99) and streamed tokens/s at 1 and 16 concurrent streams, interleaved.

Run: python -m tests.bench.bench_proxy [--requests 200] [--rounds 6] [--parallel 4 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import aiohttp
import psutil

from tests.bench.harness import (
    gemma_gguf,
    bench_main,
    BenchError, Stream, StreamFailed, bench_instance, chat_body, engine_slot, finish_machine_info,
    llama_server_binary, machine_info, machine_line, ms, pct, save_results, stream_chat,
    table, temp_dir,
)
from tests.support.instance import Instance
from tests.support.tiny_models import write_cycle_model

MODEL = "bench:model"
TTFT_MAX_TOKENS = 8
STREAM_MAX_TOKENS = 256
CONCURRENCY = (1, 16)
STREAMS_PER_ROUND = 16  # a multiple of every CONCURRENCY value
WARMUP = 10  # per side, not counted: first connections, first prompt-cache fill

Side = tuple[aiohttp.ClientSession, str]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_proxy", description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="TTFT requests per side")
    parser.add_argument("--rounds", type=int, default=6, help="throughput rounds per side and concurrency")
    parser.add_argument("--parallel", type=int, nargs="+", default=[4],
                        help="llama-server --parallel values to run (one instance each)")
    parser.add_argument("--model", choices=["cycle", "gemma"], default="cycle",
                        help="the synthetic ~2000 tokens/s cycle model, or the real Gemma 3 270M")
    parser.add_argument("--engine-args", default="", help='extra llama-server arguments, e.g. "--poll 0"')
    return parser.parse_args(argv)


def interleaved(sides: dict[str, Side], i: int) -> list[tuple[str, Side]]:
    # Alternate who goes first, so neither side always runs on the other's leftovers.
    items = list(sides.items())
    return items if i % 2 == 0 else items[::-1]


async def measure_ttft(sides: dict[str, Side], n: int) -> dict[str, dict[str, list]]:
    """Per side: samples[i] is request i's TTFT, None where it failed; pairs share an index."""
    body = chat_body(MODEL, TTFT_MAX_TOKENS)
    out: dict[str, dict[str, list]] = {name: {"samples": [], "errors": [], "warmup_errors": []} for name in sides}
    for i in range(-WARMUP, n):
        for name, (session, url) in interleaved(sides, i):
            try:
                first: float | None = (await stream_chat(session, url, body)).first_token_s
            except StreamFailed as exc:
                first = None
                out[name]["errors" if i >= 0 else "warmup_errors"].append(str(exc))
            if i >= 0:
                out[name]["samples"].append(first)
    return out


async def one_round(side: Side, concurrency: int) -> tuple[int, float, list[str]]:
    """(completion tokens, wall seconds, failures) of STREAMS_PER_ROUND streams, `concurrency` at a time.

    Every round carries the same tokens whatever the concurrency, so a one-stream round
    is not a single 0.1 s stream that one scheduling hiccup can halve.
    """
    session, url = side
    body = chat_body(MODEL, STREAM_MAX_TOKENS)
    done: list[Stream] = []
    failed: list[str] = []

    async def worker() -> None:
        for _ in range(STREAMS_PER_ROUND // concurrency):
            try:
                done.append(await stream_chat(session, url, body))
            except StreamFailed as exc:
                failed.append(str(exc))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    if any(s.tokens != STREAM_MAX_TOKENS for s in done):
        raise BenchError(f"{url}: a stream ended before {STREAM_MAX_TOKENS} tokens")
    return sum(s.tokens for s in done), wall, failed


async def measure_throughput(sides: dict[str, Side], concurrency: int, rounds: int,
                             gateway: psutil.Process) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {name: {"rounds_tps": [], "errors": []} for name in sides}
    tokens_total, cpu_s = 0, 0.0
    for i in range(rounds):
        for name, side in interleaved(sides, i):
            cpu_before = sum(gateway.cpu_times()[:2])
            tokens, wall, failed = await one_round(side, concurrency)
            out[name]["rounds_tps"].append(tokens / wall)  # type: ignore[union-attr]
            out[name]["errors"] += failed  # type: ignore[operator]
            if name == "gateway":
                # Only the gateway's own rounds: the CPU it burns per relayed token.
                cpu_s += sum(gateway.cpu_times()[:2]) - cpu_before
                tokens_total += tokens
    for side in out.values():
        side["median_tps"] = statistics.median(side["rounds_tps"])  # type: ignore[arg-type]
    out["gateway"]["cpu_us_per_token"] = cpu_s / max(tokens_total, 1) * 1e6
    return out


async def measure(inst: Instance, args: argparse.Namespace) -> dict[str, object]:
    # No client-side cap (16 streams open at once), and a fresh connection per request on
    # both sides: llama-server closes the connection after every streamed response despite
    # its "Keep-Alive" header, so a pooled direct connection would fail every other request.
    connector = {"limit": 0, "force_close": True}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(**connector)) as gw, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(**connector)) as direct:
        await stream_chat(gw, inst.url, chat_body(MODEL, TTFT_MAX_TOKENS))  # loads the engine
        slot = engine_slot(inst, MODEL)
        if slot is None or not slot["port"]:
            raise BenchError(f"no running engine for {MODEL} after the warm-up request")
        # The same llama-server behind both paths.
        sides: dict[str, Side] = {"direct": (direct, f"http://127.0.0.1:{slot['port']}"), "gateway": (gw, inst.url)}
        ttft = await measure_ttft(sides, args.requests)
        gateway = psutil.Process(inst.procs["gateway"].pid)
        tput = {c: await measure_throughput(sides, c, args.rounds, gateway) for c in CONCURRENCY}
    return {"ttft_s": ttft, "throughput": tput, "engine_port": slot["port"]}


def ttft_rows(parallel: int, ttft: dict[str, dict[str, list]]) -> list[list[object]]:
    pairs = list(zip(ttft["direct"]["samples"], ttft["gateway"]["samples"]))
    d = [x for x, _ in pairs if x is not None]
    g = [y for _, y in pairs if y is not None]
    added50, added99 = pct(g, 50) - pct(d, 50), pct(g, 99) - pct(d, 99)
    # Request i of each side ran back to back: their difference cancels drift in the host's load.
    paired = statistics.median(y - x for x, y in pairs if x is not None and y is not None)
    errors = f"{len(ttft['direct']['errors'])} / {len(ttft['gateway']['errors'])}"
    return [[parallel, f"{len(d)} / {len(g)}", ms(pct(d, 50)), ms(pct(d, 99)), ms(pct(g, 50)), ms(pct(g, 99)),
             ms(added50), ms(added99), ms(paired), "yes" if added50 < 0.002 else "no", errors]]


def tput_rows(parallel: int, tput: dict[int, dict[str, dict]]) -> list[list[object]]:
    rows = []
    for c, sides in tput.items():
        d, g = sides["direct"]["median_tps"], sides["gateway"]["median_tps"]
        paired = statistics.median(y / x for x, y in zip(sides["direct"]["rounds_tps"], sides["gateway"]["rounds_tps"]))
        errors = f"{len(sides['direct']['errors'])} / {len(sides['gateway']['errors'])}"
        rows.append([parallel, c, f"{d:.0f}", f"{g:.0f}", f"{g / d:.3f}", f"{paired:.3f}",
                     "yes" if g / d >= 0.97 else "no", f"{sides['gateway']['cpu_us_per_token']:.0f}", errors])
    return rows


def report(info: dict[str, object], results: dict[int, dict[str, object]], args: argparse.Namespace) -> str:
    ttft = [row for p, r in results.items() for row in ttft_rows(p, r["ttft_s"])]  # type: ignore[arg-type]
    tput = [row for p, r in results.items() for row in tput_rows(p, r["throughput"])]  # type: ignore[arg-type]
    return "\n\n".join([
        machine_line(info),
        f"Time to first token, streamed chat, max_tokens {TTFT_MAX_TOKENS}, {args.requests} requests per side "
        "interleaved (ms; target: added p50 < 2 ms)",
        table(["parallel", "n (direct / gateway)", "direct p50", "direct p99", "gateway p50", "gateway p99",
               "added p50", "added p99", "paired median added", "< 2 ms", "failed (direct / gateway)"], ttft),
        f"Streamed tokens/s, {STREAMS_PER_ROUND} streams of {STREAM_MAX_TOKENS} tokens per round, median of "
        f"{args.rounds} interleaved rounds per side (target: gateway/direct >= 0.97)",
        table(["parallel", "streams", "direct tok/s", "gateway tok/s", "gateway/direct", "paired median ratio",
               ">= 0.97",
               "gateway CPU us/token", "failed streams (direct / gateway)"], tput),
    ])


async def run(args: argparse.Namespace) -> None:
    binary = llama_server_binary()
    info = machine_info(binary)
    results: dict[int, dict[str, object]] = {}
    with temp_dir("lmforge-bench-proxy-") as tmp:
        weights = write_cycle_model(tmp / "cycle.gguf") if args.model == "cycle" else gemma_gguf()
        for parallel in args.parallel:
            extra = json.dumps(args.engine_args.split())
            config = f"[llama_cpp]\nparallel = {parallel}\nextra_args = {extra}\n"
            with bench_instance(tmp / f"home-p{parallel}", {MODEL: weights}, config) as inst:
                results[parallel] = await measure(inst, args)
    text = report(finish_machine_info(info), results, args)
    print(text)
    path = save_results("bench_proxy", {"machine": info, "args": vars(args), "results": results,
                                         "report": text})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    sys.exit(bench_main("bench_proxy", lambda argv: run(parse_args(argv)), sys.argv[1:]))
