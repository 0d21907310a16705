"""Memory charge against the real peak: load each model, fill every parallel slot to its
full context (several rounds of distinct prompts, so the host prompt cache fills too),
and compare the engine process group's peak RSS with the charge.

Two sides, both printed: "hand" starts llama-server with the argv LMForge would use and
applies manager.memory.charge() to its own RSS samples; "lmforge" loads the model through
a real LMForge and reads estimate / measured / charged from /lf/status.
Aim: the charge within 25 % of the peak, and never under it.

Run: python -m tests.bench.bench_memory [--models tiny gemma] [--sides hand lmforge] [--max-rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from catalog.store import ModelStore
from manager.config import Paths, Settings
from manager.engines.base import MemoryPlan
from manager.engines.llamacpp import LlamaCppAdapter
from manager.memory import charge, growth_after_ready
from manager.process import group_memory
from manager.protocol import ModelEntry, SlotKind
from tests.bench.harness import (
    BenchError, bench_instance, bench_main, engine_slot, finish_machine_info, gemma_gguf, hand_engine,
    llama_server_binary, machine_info, machine_line, save_results, table, temp_dir,
)
from tests.support.instance import Instance
from tests.support.tiny_models import write_chat_model

MODELS = {"tiny": "bench:tiny", "gemma": "bench:gemma"}
# Token ids that are ordinary text in each vocabulary: bytes for the tiny model's
# byte-level one, the bulk of Gemma's 262k (its specials sit at both ends).
TOKEN_RANGES = {"tiny": (0x41, 0x7A), "gemma": (1_000, 200_000)}
N_PREDICT = {"tiny": 256, "gemma": 64}
MARGIN = 16  # tokens each sequence leaves free, so four of them fit the unified cache
STATUS_S = 0.25  # how often /lf/status is read through LMForge
SAMPLE_S = 0.02
AIM = 1.25
MiB = 1024**2


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_memory", description=__doc__)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--sides", nargs="+", choices=["hand", "lmforge"], default=["hand", "lmforge"])
    parser.add_argument("--max-rounds", type=int, default=200,
                        help="rounds of new prompts at most; they stop once the peak levels off "
                             "(the host prompt cache full)")
    return parser.parse_args(argv)


@dataclass
class Trace:
    """RSS samples of one engine, and the charge each sample would give."""

    estimate: int
    growth: int
    at_ready: int = 0
    at_ready_private: int = 0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss, private)
    rounds: list[dict] = field(default_factory=list)
    lmforge: list[dict] = field(default_factory=list)  # /lf/status slot figures, when through LMForge

    def __post_init__(self) -> None:
        self.updated = asyncio.Condition()  # notified after each reading; not a field, so not in the results

    @property
    def peak(self) -> int:
        return max((rss for _, rss, _ in self.samples), default=self.at_ready)

    @property
    def peak_private(self) -> int:
        return max((p for _, _, p in self.samples), default=self.at_ready_private)

    def charges(self) -> list[int]:
        return [charge(self.estimate, rss, self.at_ready, self.growth) for _, rss, _ in self.samples]

    def under(self) -> int:
        """How many samples the engine held more than it was charged at that moment."""
        return sum(rss > c for (_, rss, _), c in zip(self.samples, self.charges()))


async def sample(pid: int, trace: Trace, stop: asyncio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        figures = group_memory(pid)
        if figures is not None:
            trace.samples.append((time.monotonic() - started, *figures))
        await trace_updated(trace)
        await pause(stop, SAMPLE_S)


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """The interval between two readings, cut short when `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def trace_updated(trace: Trace) -> None:
    async with trace.updated:
        trace.updated.notify_all()


async def until(trace: Trace, predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Wait, on the readings themselves, until `predicate()` holds."""
    async with trace.updated:
        try:
            await asyncio.wait_for(trace.updated.wait_for(predicate), timeout)
        except asyncio.TimeoutError:
            raise BenchError(f"timed out after {timeout}s waiting for {what}") from None


def caught_up(trace: Trace, held: int) -> bool:
    """The manager's latest reading (through /lf/status) is within 1% of what the engine holds."""
    return bool(trace.lmforge) and (trace.lmforge[-1].get("measured_bytes") or 0) >= 0.99 * held


async def more_samples(trace: Trace, n: int) -> None:
    """Wait until the sampler has read the engine `n` more times (its memory after the last round)."""
    target = len(trace.samples) + n
    await until(trace, lambda: len(trace.samples) >= target, f"{n} more memory samples")


# --- filling every slot ---

def fill_bodies(model: str, key: str, ctx: int, parallel: int, seed: int, n_predict: int) -> list[dict]:
    """One /completion body per slot: prompt + generation fill ctx / parallel tokens."""
    rng = random.Random(seed)
    lo, hi = TOKEN_RANGES[key]
    n_prompt = ctx // parallel - n_predict - MARGIN
    return [{"model": model, "prompt": [rng.randrange(lo, hi) for _ in range(n_prompt)], "n_predict": n_predict,
             "max_tokens": n_predict, "ignore_eos": True, "temperature": 0, "cache_prompt": True}
            for _ in range(parallel)]


async def complete(session: aiohttp.ClientSession, url: str, body: dict) -> dict:
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise BenchError(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
        return await resp.json()


def tokens_of(answer: dict) -> int:
    """Prompt plus generated tokens, from llama-server's /completion or OpenAI's usage."""
    if "usage" in answer:
        return answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    return answer["tokens_evaluated"] + answer["tokens_predicted"]


async def fill_rounds(session: aiohttp.ClientSession, url: str, model: str, key: str, ctx: int,
                      parallel: int, max_rounds: int, trace: Trace) -> None:
    """One round that fills every slot, then rounds of new prompts until RSS levels off.

    From the second round on, starting a new prompt moves each slot's last sequence
    (and its context checkpoints) into the host prompt cache, which grows until
    --cache-ram is reached: a model serving varied traffic gets there.
    """
    for r in range(max_rounds):
        n_predict = N_PREDICT[key] if r == 0 else 1  # later rounds only need new prompts in the cache
        bodies = fill_bodies(model, key, ctx, parallel, seed=r, n_predict=n_predict)
        started = time.monotonic()
        answers = await asyncio.gather(*(complete(session, url, b) for b in bodies))
        trace.rounds.append({"round": r + 1, "seconds": round(time.monotonic() - started, 1),
                             "tokens_per_slot": [tokens_of(a) for a in answers], "peak_so_far": trace.peak})
        if levelled_off(trace.rounds):
            return


def levelled_off(rounds: list[dict], window: int = 3, tolerance: float = 0.01) -> bool:
    """The peak grew by less than `tolerance` over the last `window` rounds."""
    if len(rounds) <= window:
        return False
    before, now = rounds[-window - 1]["peak_so_far"], rounds[-1]["peak_so_far"]
    return now - before < tolerance * now


# --- the two sides ---

def plan_for(entry: ModelEntry, home: Path) -> tuple[LlamaCppAdapter, MemoryPlan]:
    settings = Settings()
    adapter = LlamaCppAdapter(settings, Paths(home))
    return adapter, adapter.plan(entry, SlotKind.CHAT, None, 0)


async def by_hand(entry: ModelEntry, key: str, rounds: int, tmp: Path) -> Trace:
    adapter, plan = plan_for(entry, tmp / "home")
    argv = adapter.command(Path(llama_server_binary()), entry, SlotKind.CHAT, 0, plan)
    trace = Trace(estimate=plan.total, growth=growth_after_ready(plan, on_gpu=False))
    async with aiohttp.ClientSession() as session:
        with hand_engine(argv, tmp / f"hand-{key}.log") as engine:
            await engine.wait_healthy(session)
            trace.at_ready, trace.at_ready_private = group_memory(engine.proc.pid) or (0, 0)
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample(engine.proc.pid, trace, stop))
            try:
                await fill_rounds(session, engine.url + "/completion", entry.name, key, plan.ctx_size,
                                  adapter.settings.parallel, rounds, trace)
                await more_samples(trace, 2)
            finally:
                stop.set()
                await sampler
    return trace


async def through_lmforge(inst: Instance, model: str, key: str, rounds: int) -> Trace:
    code, body = await asyncio.to_thread(inst.post, "/lf/model/switch", {"model": model}, timeout=300)
    if code != 200:
        raise BenchError(f"load {model}: HTTP {code}: {body}")
    slot = engine_slot(inst, model)
    if slot is None or not slot.get("pid"):
        raise BenchError(f"{model} loaded but has no engine in /lf/status")
    trace = Trace(estimate=slot.get("estimate_bytes", 0), growth=0)
    trace.at_ready, trace.at_ready_private = group_memory(slot["pid"]) or (0, 0)
    stop = asyncio.Event()

    async def read_status() -> None:
        while not stop.is_set():
            s = await asyncio.to_thread(engine_slot, inst, model) or {}
            trace.lmforge.append({k: s.get(k) for k in ("estimate_bytes", "measured_bytes", "charged_bytes")})
            await trace_updated(trace)
            await pause(stop, STATUS_S)

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(sample(slot["pid"], trace, stop)), asyncio.create_task(read_status())]
        try:
            await fill_rounds(session, inst.url + "/v1/completions", model, key, slot["ctx_size"],
                              Settings().llama_cpp.parallel, rounds, trace)
            # The manager measures about once a second: wait for a reading that has caught up with
            # what the engine holds after the last round.
            await more_samples(trace, 1)
            held = trace.samples[-1][1]
            await until(trace, lambda: caught_up(trace, held), "the manager's reading of the engine after the last round")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    return trace


# --- report ---

def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024**3:.3f}"


def fill_peak(t: Trace) -> int:
    """Peak RSS by the end of the first round: every slot filled once, the prompt cache still empty."""
    return t.rounds[0]["peak_so_far"] if t.rounds else t.peak


def hand_row(name: str, t: Trace) -> list[object]:
    charged = charge(t.estimate, t.at_ready, t.at_ready, t.growth)
    ratio = max(t.charges(), default=charged) / t.peak
    verdict = "yes" if t.under() == 0 and ratio <= AIM else "no"
    return [name, gib(t.estimate), f"{t.estimate / t.peak:.2f}", gib(t.at_ready), gib(t.at_ready_private),
            gib(fill_peak(t)), f"{gib(t.peak)} ({len(t.rounds)})", gib(t.peak_private), gib(t.growth),
            gib(charged), f"{ratio:.2f}", t.under(), verdict]


def lmforge_row(name: str, t: Trace) -> list[object]:
    charged = [s["charged_bytes"] for s in t.lmforge if s.get("measured_bytes") and s.get("charged_bytes")]
    measured = [s["measured_bytes"] for s in t.lmforge if s.get("measured_bytes")]
    top = max(charged, default=0)
    ratio = top / t.peak if top else 0.0
    verdict = "yes" if charged and min(charged) >= t.peak and ratio <= AIM else "no"
    return [name, gib(t.estimate), gib(t.at_ready), gib(fill_peak(t)), f"{gib(t.peak)} ({len(t.rounds)})",
            gib(max(measured, default=None)), gib(min(charged, default=None)), gib(top or None),
            f"{ratio:.2f}", verdict]


def rounds_line(side: str, name: str, t: Trace) -> str:
    shown = t.rounds if len(t.rounds) <= 8 else [*t.rounds[:4], *t.rounds[-3:]]
    return f"{side} {name}: " + "; ".join(
        f"#{r['round']} {r['seconds']}s {r['tokens_per_slot'][0]} tokens/slot, peak {gib(r['peak_so_far'])}"
        for r in shown)


def report(info: dict, hand: dict[str, Trace], lmforge: dict[str, Trace]) -> str:
    parts = [machine_line(info)]
    if hand:
        parts += [
            "By hand: llama-server with LMForge's argv; charge = manager.memory.charge() applied to its RSS "
            "samples. Round 1 fills every slot to its full context; later rounds bring new prompts until the "
            f"peak levels off (the host prompt cache full). GiB; aim: charge >= RSS at every sample and the "
            f"largest charge within {AIM:.2f}x of the peak.",
            table(["model", "header estimate", "estimate / peak", "RSS at ready", "private at ready",
                   "peak after round 1", "peak (rounds)", "peak private", "growth forecast", "charge at ready",
                   "max charge / peak", "samples under", "within aim"], [hand_row(n, t) for n, t in hand.items()]),
        ]
    if lmforge:
        parts += [
            "Through LMForge: /lf/status slot figures, read 4 times a second during the same rounds, against "
            "the engine group's RSS. GiB; charged_bytes (once measured) must stay at or above the peak.",
            table(["model", "estimate_bytes", "RSS at ready", "peak after round 1", "peak (rounds)",
                   "max measured_bytes", "min charged_bytes", "max charged_bytes", "max charged / peak",
                   "within aim"], [lmforge_row(n, t) for n, t in lmforge.items()]),
        ]
    parts += [rounds_line(side, name, t) for side, traces in (("hand", hand), ("lmforge", lmforge))
              for name, t in traces.items()]
    return "\n\n".join(parts)


def summary(t: Trace) -> dict:
    data = asdict(t)
    data["samples"] = t.samples[:: max(1, len(t.samples) // 400)]  # enough for a plot, not the whole trace
    data["peak"], data["peak_private"] = t.peak, t.peak_private
    return data


async def run(args: argparse.Namespace) -> None:
    binary = llama_server_binary()
    info = machine_info(binary)
    hand: dict[str, Trace] = {}
    lmforge: dict[str, Trace] = {}
    with temp_dir("lmforge-bench-memory-") as tmp:
        files = {"tiny": write_chat_model(tmp / "tiny-chat.gguf")}
        if "gemma" in args.models:
            files["gemma"] = gemma_gguf()
        models = {MODELS[key]: files[key] for key in args.models}
        if "hand" in args.sides:
            store = ModelStore(Paths(tmp / "hand-home"))
            for key in args.models:
                entry = store.import_gguf(files[key], MODELS[key])
                hand[key] = await by_hand(entry, key, args.max_rounds, tmp)
        if "lmforge" in args.sides:
            with bench_instance(tmp / "home", models) as inst:
                for key in args.models:
                    lmforge[key] = await through_lmforge(inst, MODELS[key], key, args.max_rounds)
                    await asyncio.to_thread(inst.post, "/lf/model/unload", {"model": MODELS[key]})
    text = report(finish_machine_info(info), hand, lmforge)
    print(text)
    path = save_results("bench_memory", {"machine": info, "args": vars(args), "report": text,
                                          "hand": {k: summary(t) for k, t in hand.items()},
                                          "lmforge": {k: summary(t) for k, t in lmforge.items()}})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    sys.exit(bench_main("bench_memory", lambda argv: run(parse_args(argv)), sys.argv[1:]))
