"""Cold-load latency and swap cost: request-to-first-token of an unloaded model through
LMForge, and of a model that must evict the other (max_loaded_models = 1), each against
the same llama-server command started by hand. Both sides interleaved, round by round.

Run: python -m tests.bench.bench_load [--rounds 10] [--models tiny gemma]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp

from tests.bench.harness import (
    bench_main,
    BenchError, bench_instance, chat_body, engine_argv, engine_slot, finish_machine_info, gemma_gguf, hand_engine,
    llama_server_binary, machine_info, machine_line, ms, save_results, stream_chat,
    table, temp_dir, unload, wait_for,
)
from tests.support.instance import Instance
from tests.support.tiny_models import write_chat_model

MODELS = {"tiny": "bench:tiny", "gemma": "bench:gemma"}
# One model at a time for every phase: cold loads unload before each round anyway, and
# the swap phase needs each request to evict the other model.
CONFIG = "max_loaded_models = 1\n"
TARGET_S = 0.150


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_load", description=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="cold loads per model and side; swaps per model")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    return parser.parse_args(argv)


def last_spawn_at(inst: Instance) -> float:
    """Wall-clock time of the manager's last "spawned pid" log line (millisecond resolution)."""
    lines = [line for line in inst.log("manager").splitlines() if " spawned pid " in line]
    if not lines:
        raise BenchError("the manager log has no 'spawned pid' line")
    return datetime.strptime(lines[-1][:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


class Bench:
    """One LMForge instance, a client session to it, and the argv its engines run with."""

    def __init__(self, inst: Instance, session: aiohttp.ClientSession, logs: Path) -> None:
        self.inst, self.session, self.logs = inst, session, logs
        self.argv: dict[str, list[str]] = {}

    async def lmforge(self, model: str) -> float:
        """Seconds from sending a chat request to its first token, through the gateway."""
        return (await stream_chat(self.session, self.inst.url, chat_body(model, 1))).first_token_s

    async def lmforge_cold(self, model: str) -> dict[str, float]:
        """lmforge(), plus when the manager logged the engine's spawn: its own share of a cold load."""
        sent = time.time()
        first = await self.lmforge(model)
        return {"first_token_s": first, "spawned_s": last_spawn_at(self.inst) - sent}

    async def by_hand(self, model: str) -> dict[str, float]:
        """Start the engine LMForge would start, poll it healthy, ask it the same request."""
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            with hand_engine(self.argv[model], self.logs / "hand.log") as engine:
                await engine.wait_healthy(session)
                healthy = time.perf_counter() - started
                answer = await stream_chat(session, engine.url, chat_body(model, 1))
                stopped = engine.stop()
        return {"healthy_s": healthy, "first_token_s": healthy + answer.first_token_s, "stop_s": stopped}

    async def learn_argv(self, model: str) -> None:
        """Load once through LMForge (also warms the page cache and the manager's GGUF cache)."""
        await self.lmforge(model)
        slot = engine_slot(self.inst, model)
        if slot is None or not slot["pid"]:
            raise BenchError(f"{model} answered but has no engine in /lf/status")
        self.argv[model] = engine_argv(slot["pid"])
        await unload(self.inst, model)


async def cold_rounds(bench: Bench, model: str, rounds: int) -> dict[str, list]:
    out: dict[str, list] = {"lmforge": [], "hand": []}
    for i in range(rounds):
        async def lmforge() -> None:
            out["lmforge"].append(await bench.lmforge_cold(model))
            await unload(bench.inst, model)

        async def hand() -> None:
            out["hand"].append(await bench.by_hand(model))

        # Alternate who goes first, so neither side always runs on the other's leftovers.
        for step in (lmforge, hand) if i % 2 == 0 else (hand, lmforge):
            await step()
    return out


async def swap_rounds(bench: Bench, a: str, b: str, rounds: int) -> dict[str, dict[str, list]]:
    """Alternate a and b through LMForge; after each swap, cold-start the incoming model by hand."""
    out: dict[str, dict[str, list]] = {m: {"swap_s": [], "hand": [], "outgoing_still_stopping": []} for m in (a, b)}
    await bench.lmforge(a)  # a resident, so the first timed request (b) must evict it
    for i in range(2 * rounds):
        incoming, outgoing = (b, a) if i % 2 == 0 else (a, b)
        out[incoming]["swap_s"].append(await bench.lmforge(incoming))
        # The scheduler may start the incoming engine while the evicted one is still stopping.
        left = engine_slot(bench.inst, outgoing)
        if left is not None and left["state"] != "stopping":
            raise BenchError(f"{outgoing} is still {left['state']}: max_loaded_models = 1 did not evict it")
        out[incoming]["outgoing_still_stopping"].append(left is not None)
        await wait_for(lambda: engine_slot(bench.inst, outgoing) is None, f"{outgoing} to finish stopping")
        # LMForge's copy of `incoming` stays resident but idle meanwhile; an idle llama-server takes no CPU.
        out[incoming]["hand"].append(await bench.by_hand(incoming))
    for model in (a, b):
        await unload(bench.inst, model)
    return out


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def cold_row(name: str, result: dict[str, list]) -> list[object]:
    lf, hand = median_of(result["lmforge"], "first_token_s"), median_of(result["hand"], "first_token_s")
    return [name, len(result["lmforge"]), ms(median_of(result["hand"], "healthy_s")), ms(hand),
            ms(median_of(result["lmforge"], "spawned_s")), ms(lf), ms(lf - hand),
            "yes" if lf - hand <= TARGET_S else "no"]


def swap_rows(result: dict[str, dict[str, list]]) -> list[list[object]]:
    rows = []
    for incoming, outgoing in zip(result, reversed(list(result))):
        swap = statistics.median(result[incoming]["swap_s"])
        start = median_of(result[incoming]["hand"], "first_token_s")
        stop = median_of(result[outgoing]["hand"], "stop_s")
        within = "yes" if swap - start <= TARGET_S else "no"
        overlapped = sum(result[incoming]["outgoing_still_stopping"])
        rows.append([incoming, len(result[incoming]["swap_s"]), ms(stop), ms(start), ms(swap), ms(swap - start),
                     ms(swap - stop - start), overlapped, within])
    return rows


def report(info: dict[str, object], cold: dict[str, dict], swap: dict[str, dict] | None, rounds: int) -> str:
    parts = [
        machine_line(info),
        f"Cold load: request to first token (stream, max_tokens 1), medians of {rounds} interleaved rounds (ms; "
        f"target: LMForge within {TARGET_S * 1000:.0f} ms of the hand-started engine)",
        table(["model", "rounds", "by hand: healthy", "by hand: first token", "LMForge: request to spawn",
               "LMForge: first token", "LMForge - by hand", "within target"],
              [cold_row(n, r) for n, r in cold.items()]),
    ]
    if swap:
        parts += [
            "Swap (max_loaded_models = 1): request for the incoming model, which evicts the other, to first token, "
            "against a by-hand cold start of the incoming model and a by-hand SIGTERM-to-exit of the outgoing one "
            "(ms, medians; target on swap - by hand start)",
            table(["incoming model", "swaps", "by hand: stop outgoing", "by hand: first token",
                   "LMForge swap: first token", "swap - by hand start", "swap - (by hand stop + start)",
                   "outgoing still stopping at first token", "within target"], swap_rows(swap)),
        ]
    return "\n\n".join(parts)


async def run(args: argparse.Namespace) -> None:
    binary = llama_server_binary()
    info = machine_info(binary)
    with temp_dir("lmforge-bench-load-") as tmp:
        files = {"tiny": write_chat_model(tmp / "tiny-chat.gguf")}
        if "gemma" in args.models:
            files["gemma"] = gemma_gguf()
        models = {MODELS[key]: files[key] for key in args.models}
        with bench_instance(tmp / "home", models, CONFIG) as inst:
            async with aiohttp.ClientSession() as session:
                bench = Bench(inst, session, tmp)
                for model in models:
                    await bench.learn_argv(model)
                cold = {m: await cold_rounds(bench, m, args.rounds) for m in models}
                swap = await swap_rounds(bench, *models, args.rounds) if len(models) == 2 else None
    text = report(finish_machine_info(info), cold, swap, args.rounds)
    print(text)
    path = save_results("bench_load", {"machine": info, "args": vars(args), "argv": bench.argv,
                                        "cold": cold, "swap": swap, "report": text})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    sys.exit(bench_main("bench_load", lambda argv: run(parse_args(argv)), sys.argv[1:]))
