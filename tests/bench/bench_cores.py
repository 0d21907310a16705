"""Cores as a budget (issue 16): aggregate tokens/s and first-token waits with 1, 2, 4 and 8 busy
models, against one busy engine of the same model alone.

Each configuration is k models (copies of one GGUF under k names) loaded first in their own
LMForge, then 4 streams of 64 tokens per model fired at once, R rounds, the median round (by
wall time) reported. `--unbudgeted` fires the same load straight at k engines started by hand
with LMForge's argv minus `--threads`: llama-server's default threads, the issue's "before".
The fairness check holds the largest first-token wait against cpu_fair_share_s plus the longest
single request of that round (its first token to its last: what a held engine finishes first).

Run: python -m tests.bench.bench_cores [--rounds 3] [--policy auto|exclusive|shared]
     [--fair-share 1.0] [--unbudgeted] [--models tiny gemma] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.bench.harness import (
    BenchError, Stream, StreamFailed, bench_instance, bench_main, chat_body, engine_argv, engine_slot,
    finish_machine_info, gemma_gguf, hand_engine, llama_server_binary, machine_info, machine_line, ms, pct,
    save_results, stream_chat, table, temp_dir, wait_for,
)
from tests.support.instance import Instance
from tests.support.tiny_models import write_cycle_model

STREAMS = 4  # per model, all at once: the engine's 4 parallel slots
MAX_TOKENS = 64
WARMUP_TOKENS = 4
BUSY = {"tiny": (1, 2, 4, 8), "gemma": (1, 2)}
QUICK_BUSY = {"tiny": (1, 2)}
THREAD_FLAGS = ("--threads", "--threads-batch", "-t", "-tb")
LOAD_TIMEOUT_S = 300.0
Target = tuple[str, str]  # (base url, model name)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_cores", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration; the median is reported")
    parser.add_argument("--policy", choices=["auto", "exclusive", "shared"], default="auto",
                        help="cpu_policy written into each instance's config.toml")
    parser.add_argument("--fair-share", type=float, default=1.0, help="cpu_fair_share_s, seconds")
    parser.add_argument("--unbudgeted", action="store_true",
                        help="engines started by hand with llama-server's default threads, no LMForge in front")
    parser.add_argument("--models", nargs="+", choices=list(BUSY), default=list(BUSY))
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, tiny models, k = 1 and 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.models = 1, list(QUICK_BUSY)
    if args.rounds < 1 or args.fair_share <= 0:
        parser.error("--rounds must be >= 1 and --fair-share > 0")
    return args


def busy_counts(args: argparse.Namespace, family: str) -> tuple[int, ...]:
    return (QUICK_BUSY if args.quick else BUSY)[family]


def names(family: str, k: int) -> list[str]:
    return [f"bench-{family}:{i}" for i in range(k)]


# --- one round ---

@dataclass(frozen=True)
class Round:
    wall_s: float
    tokens: int
    streams: dict[str, list[Stream]]  # model -> its streams
    errors: list[str]

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s

    @property
    def first_tokens(self) -> list[float]:
        return [s.first_token_s for streams in self.streams.values() for s in streams]

    @property
    def longest_request_s(self) -> float:
        """The longest request once it had its first token: what a yielding engine may still have to finish."""
        return max((s.total_s - s.first_token_s for ss in self.streams.values() for s in ss), default=0.0)


async def fire(session: aiohttp.ClientSession, targets: list[Target], max_tokens: int = MAX_TOKENS) -> Round:
    """STREAMS streams per target, every one sent at once; the round ends when the last one does."""
    streams: dict[str, list[Stream]] = {model: [] for _, model in targets}
    errors: list[str] = []

    async def one(url: str, model: str, body: bytes) -> None:
        try:
            streams[model].append(await stream_chat(session, url, body))
        except StreamFailed as exc:
            errors.append(f"{model}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(one(url, model, chat_body(model, max_tokens))
                           for url, model in targets for _ in range(STREAMS)))
    wall = time.perf_counter() - started
    short = [m for m, ss in streams.items() for s in ss if s.tokens != max_tokens]
    if short:
        raise BenchError(f"a stream of {short[0]} ended before {max_tokens} tokens")
    return Round(wall, sum(s.tokens for ss in streams.values() for s in ss), streams, errors)


def summary(rnd: Round, fair_share_s: float | None) -> dict[str, object]:
    firsts = rnd.first_tokens
    per_model = {m: {"ttft_p50_s": pct([s.first_token_s for s in ss], 50),
                     "ttft_p99_s": pct([s.first_token_s for s in ss], 99),
                     "max_first_s": max(s.first_token_s for s in ss)} for m, ss in rnd.streams.items() if ss}
    out: dict[str, object] = {
        "wall_s": rnd.wall_s, "tokens": rnd.tokens, "tps": rnd.tps,
        "ttft_p50_s": pct(firsts, 50) if firsts else None, "ttft_p99_s": pct(firsts, 99) if firsts else None,
        "max_first_s": max(firsts, default=0.0), "longest_request_s": rnd.longest_request_s,
        "per_model": per_model, "errors": rnd.errors,
        "streams": {m: [[round(s.first_token_s, 4), round(s.total_s, 4)] for s in ss]  # [first token, end] s
                    for m, ss in rnd.streams.items()},
    }
    if fair_share_s is not None:
        out["bound_s"] = fair_share_s + rnd.longest_request_s
        out["within_bound"] = out["max_first_s"] <= out["bound_s"]  # type: ignore[operator]
    return out


async def measure(session: aiohttp.ClientSession, targets: list[Target], rounds: int,
                  between: object = None) -> list[Round]:
    """A warm-up request per model (not counted), then `rounds` rounds; `between` waits until all is idle."""
    for url, model in targets:
        await stream_chat(session, url, chat_body(model, WARMUP_TOKENS))
    out = []
    for _ in range(rounds):
        if between is not None:
            await between()  # type: ignore[operator]
        out.append(await fire(session, targets))
    return out


def median_round(rounds: list[Round]) -> int:
    order = sorted(range(len(rounds)), key=lambda i: rounds[i].wall_s)
    return order[(len(order) - 1) // 2]


def result(family: str, k: int, policy: str, rounds: list[Round], fair_share_s: float | None,
           extra: dict[str, object]) -> dict[str, object]:
    i = median_round(rounds)
    return {"model": family, "busy": k, "policy": policy, "median_round": i,
            "rounds": [summary(r, fair_share_s) for r in rounds], **extra}


# --- through LMForge ---

def config_toml(args: argparse.Namespace) -> str:
    return f'cpu_policy = "{args.policy}"\ncpu_fair_share_s = {args.fair_share}\nkeep_alive = "-1"\n'


def settled(inst: Instance, models: list[str]) -> bool:
    """Every model's engine ready with the thread count the policy gives now, nothing in flight: a
    policy that splits the cores by the resident models restarts engines loaded before the last one."""
    status = inst.status()
    cpu = status.get("cpu") or {}
    if cpu.get("mode") == "gpu":  # engines there keep their own few threads: the policy's count never comes
        raise BenchError("cores are budgeted on CPU hosts only: this host has a GPU (or Metal), nothing to measure")
    slots = {s["model"]: s for s in status["slots"] if s["model"] in models}
    return (len(slots) == len(models) and not cpu.get("busy_threads")
            and all(s["state"] == "ready" and not s["inflight"] and s["threads"] == cpu.get("threads")
                    for s in slots.values()))


async def load_all(inst: Instance, models: list[str]) -> None:
    for model in models:
        code, body = await asyncio.to_thread(inst.post, "/lf/model/switch", {"model": model},
                                             timeout=LOAD_TIMEOUT_S)
        if code != 200:
            raise BenchError(f"load {model}: HTTP {code}: {body}")
    await wait_for(lambda: settled(inst, models), f"{models} ready with the policy's threads", LOAD_TIMEOUT_S)


async def through_lmforge(args: argparse.Namespace, tmp: Path, family: str, weights: Path,
                          k: int) -> dict[str, object]:
    models = names(family, k)
    with bench_instance(tmp / f"home-{family}-{k}", {m: weights for m in models}, config_toml(args)) as inst:
        await load_all(inst, models)
        async with client() as session:
            idle = lambda: wait_for(lambda: settled(inst, models), "every engine idle")  # noqa: E731
            rounds = await measure(session, [(inst.url, m) for m in models], args.rounds, idle)
        status = inst.status()
        slots = [s for s in status["slots"] if s["model"] in models]
        extra = {"cpu": status.get("cpu"), "threads": {s["model"]: s["threads"] for s in slots},
                 "generations": {s["model"]: s["generation"] for s in slots}}
    return result(family, k, args.policy, rounds, args.fair_share, extra)


# --- engines started by hand, default threads ---

def without_threads(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in THREAD_FLAGS:
            skip = True
        else:
            out.append(arg)
    return out


async def lmforge_argv(tmp: Path, family: str, weights: Path) -> list[str]:
    """The argv LMForge gives this model's engine, minus the thread counts."""
    model = names(family, 1)[0]
    with bench_instance(tmp / f"home-argv-{family}", {model: weights}) as inst:
        await load_all(inst, [model])
        slot = engine_slot(inst, model)
        if slot is None or not slot["pid"]:
            raise BenchError(f"no running engine for {model} after loading it")
        return without_threads(engine_argv(slot["pid"]))


async def unbudgeted(args: argparse.Namespace, tmp: Path, family: str, argv: list[str], k: int) -> dict[str, object]:
    models = names(family, k)
    with ExitStack() as stack:
        engines = [stack.enter_context(hand_engine(argv, tmp / f"hand-{family}-{k}-{i}.log")) for i in range(k)]
        async with client() as session:
            for engine in engines:
                await engine.wait_healthy(session)
            rounds = await measure(session, [(e.url, m) for e, m in zip(engines, models)], args.rounds)
    return result(family, k, "unbudgeted", rounds, None, {"argv": argv})


def client() -> aiohttp.ClientSession:
    # No client-side cap, a fresh connection per request: llama-server closes the connection
    # after every streamed response (see bench_proxy).
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=600))


# --- report ---

def median_of(res: dict[str, object]) -> dict:
    return res["rounds"][res["median_round"]]  # type: ignore[index]


def singles(results: list[dict[str, object]]) -> dict[tuple[object, object], float]:
    return {(r["model"], r["policy"]): median_of(r)["tps"] for r in results if r["busy"] == 1}


def main_rows(results: list[dict[str, object]]) -> list[list[object]]:
    alone = singles(results)
    rows = []
    for r in results:
        m = median_of(r)
        base = alone.get((r["model"], r["policy"]))
        rows.append([r["model"], r["busy"], r["policy"], f"{m['wall_s']:.2f}", f"{m['tps']:.0f}",
                     f"{m['tps'] / base:.2f}" if base else "-", ms(m["ttft_p50_s"]), ms(m["ttft_p99_s"]),
                     f"{m['max_first_s']:.2f}"])
    return rows


def model_rows(results: list[dict[str, object]]) -> list[list[object]]:
    return [[r["model"], r["busy"], name, ms(f["ttft_p50_s"]), ms(f["ttft_p99_s"]), f"{f['max_first_s']:.2f}"]
            for r in results for name, f in median_of(r)["per_model"].items()]


def fairness_rows(results: list[dict[str, object]], fair_share_s: float) -> list[list[object]]:
    rows = []
    for r in results:
        for i, rnd in enumerate(r["rounds"]):  # type: ignore[arg-type]
            rows.append([r["model"], r["busy"], r["policy"], i + 1, f"{rnd['max_first_s']:.2f}", f"{fair_share_s:.2f}",
                         f"{rnd['longest_request_s']:.2f}", f"{rnd['bound_s']:.2f}",
                         "yes" if rnd["within_bound"] else "NO", len(rnd["errors"])])
    return rows


def report(info: dict[str, object], results: list[dict[str, object]], args: argparse.Namespace) -> str:
    side = "engines started by hand, llama-server's default threads" if args.unbudgeted else \
        f"through LMForge, cpu_policy {args.policy}, cpu_fair_share_s {args.fair_share}"
    parts = [
        machine_line(info),
        f"{STREAMS} streams of {MAX_TOKENS} tokens per busy model, all at once; {side}; median of "
        f"{args.rounds} rounds by wall time (× single: aggregate tok/s over the same model's 1-busy figure)",
        table(["model", "busy models", "policy", "wall s", "aggregate tok/s", "× single", "TTFT p50 ms",
               "TTFT p99 ms", "max first-token wait s"], main_rows(results)),
        "Per model, median round",
        table(["model", "busy models", "name", "TTFT p50 ms", "TTFT p99 ms", "max first-token wait s"],
              model_rows(results)),
    ]
    if not args.unbudgeted:
        parts += [
            "Fairness: no model's first token may wait longer than cpu_fair_share_s plus one request "
            "(the round's longest, first token to last)",
            table(["model", "busy models", "policy", "round", "max first-token wait s", "fair share s",
                   "longest request s", "bound s", "within", "failed streams"],
                  fairness_rows(results, args.fair_share)),
        ]
    return "\n\n".join(parts)


async def run(args: argparse.Namespace) -> None:
    binary = llama_server_binary()
    info = machine_info(binary)
    results: list[dict[str, object]] = []
    with temp_dir("lmforge-bench-cores-") as tmp:
        for family in args.models:
            weights = write_cycle_model(tmp / "cycle.gguf") if family == "tiny" else gemma_gguf()
            argv = await lmforge_argv(tmp, family, weights) if args.unbudgeted else []
            for k in busy_counts(args, family):
                print(f"{family}: {k} busy ...", file=sys.stderr, flush=True)
                if args.unbudgeted:
                    results.append(await unbudgeted(args, tmp, family, argv, k))
                else:
                    results.append(await through_lmforge(args, tmp, family, weights, k))
    text = report(finish_machine_info(info), results, args)
    print(text)
    path = save_results("bench_cores", {"machine": info, "args": vars(args), "streams": STREAMS,
                                        "max_tokens": MAX_TOKENS, "results": results, "report": text})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    sys.exit(bench_main("bench_cores", lambda argv: run(parse_args(argv)), sys.argv[1:]))
