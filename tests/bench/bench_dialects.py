"""What translation costs: streamed tokens/s of each translated dialect (Ollama /api/chat,
Anthropic /v1/messages, OpenAI /v1/responses) against the /v1/chat/completions byte relay,
at 1 and 16 concurrent streams, on one LMForge and one engine, interleaved rounds.

The cycle model never stops on its own, so every stream carries exactly its token
limit; each stream's own final count (eval_count, usage.output_tokens) must say so.
Target: every dialect >= 0.90x the relay at 16 streams. On a shared host a round's
tokens/s swings with others' work; the paired ratios and the gateway's CPU per token
are the steadier figures.

Run: python -m tests.bench.bench_dialects [--rounds 4] [--parallel 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
import msgspec
import psutil

from tests.bench.harness import (
    PROMPT, BenchError, Stream, StreamFailed, bench_instance, bench_main, chat_body, cpu_seconds,
    finish_machine_info, llama_server_binary, machine_info, machine_line, ms, rotation, save_results,
    stream_chat, table, temp_dir,
)
from tests.support.tiny_models import write_cycle_model

MODEL = "bench:cycle"
MAX_TOKENS = 256
CONCURRENCY = (1, 16)
STREAMS_PER_ROUND = 16  # a multiple of every CONCURRENCY value
WARMUP = 2  # streams per side, not counted: first connections, first prompt-cache fill
TARGET = 0.90
RELAY = "relay /v1/chat/completions"

_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True)
class Seen:
    """What one line of a stream carried: a text delta, or the final count of generated tokens."""

    delta: bool = False
    final_tokens: int | None = None


NOTHING = Seen()
DELTA = Seen(delta=True)


def ollama_line(line: bytes) -> Seen:
    """NDJSON: text under message.content, then one `done: true` object with eval_count."""
    if not line.strip():
        return NOTHING
    obj = _decode(line)
    if "error" in obj:
        raise StreamFailed(f"error line: {obj['error']}")
    if obj.get("done"):
        return Seen(final_tokens=obj["eval_count"])
    return DELTA if (obj.get("message") or {}).get("content") else NOTHING


def anthropic_line(line: bytes) -> Seen:
    """SSE: text_delta blocks, then message_delta with usage.output_tokens."""
    if not line.startswith(b"data:"):
        return NOTHING
    obj = _decode(line[5:])
    kind = obj.get("type")
    if kind == "content_block_delta" and obj["delta"].get("type") == "text_delta":
        return DELTA
    if kind == "message_delta":
        return Seen(final_tokens=obj["usage"]["output_tokens"])
    if kind == "error":
        raise StreamFailed(f"error event: {obj['error']}")
    return NOTHING


def responses_line(line: bytes) -> Seen:
    """SSE: response.output_text.delta events, then response.completed/incomplete with usage."""
    if not line.startswith(b"data:"):
        return NOTHING
    obj = _decode(line[5:])
    kind = obj.get("type")
    if kind == "response.output_text.delta":
        return DELTA
    if kind in ("response.completed", "response.incomplete"):
        return Seen(final_tokens=obj["response"]["usage"]["output_tokens"])
    if kind in ("response.failed", "error"):
        raise StreamFailed(f"{kind}: {obj}")
    return NOTHING


@dataclass(frozen=True)
class Dialect:
    path: str
    body: dict[str, Any]
    read_line: Callable[[bytes], Seen]


def dialects(max_tokens: int) -> dict[str, Dialect]:
    question = PROMPT[0]["content"]
    return {
        "ollama /api/chat": Dialect("/api/chat", {"model": MODEL, "messages": PROMPT, "stream": True,
                                                  "options": {"num_predict": max_tokens}}, ollama_line),
        "anthropic /v1/messages": Dialect("/v1/messages", {"model": MODEL, "messages": PROMPT, "stream": True,
                                                           "max_tokens": max_tokens}, anthropic_line),
        "openai /v1/responses": Dialect("/v1/responses", {"model": MODEL, "input": question, "stream": True,
                                                          "max_output_tokens": max_tokens}, responses_line),
    }


async def stream_dialect(session: aiohttp.ClientSession, base_url: str, dialect: Dialect, body: bytes) -> Stream:
    """POST a streaming request in `dialect` and read it to the end, counting its text deltas."""
    started = time.perf_counter()
    first, deltas, final = None, 0, None
    try:
        async with session.post(base_url + dialect.path, data=body,
                                headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                raise StreamFailed(f"{dialect.path}: HTTP {resp.status}: {(await resp.text())[:300]}")
            async for line in resp.content:
                seen = dialect.read_line(line)
                if seen.delta:
                    deltas += 1
                    first = first if first is not None else time.perf_counter() - started
                if seen.final_tokens is not None:
                    final = seen.final_tokens
    except aiohttp.ClientError as exc:
        raise StreamFailed(f"{dialect.path}: {type(exc).__name__}: {exc}") from None
    except (msgspec.DecodeError, KeyError, TypeError) as exc:
        raise StreamFailed(f"{dialect.path}: unreadable stream: {type(exc).__name__}: {exc}") from None
    if first is None or final is None:
        raise StreamFailed(f"{dialect.path}: the stream ended without {'text' if first is None else 'a final count'}")
    return Stream(first, final, time.perf_counter() - started, deltas)


Side = Callable[[], Awaitable[Stream]]


@dataclass
class Tally:
    """One side's rounds at one concurrency."""

    rounds_tps: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tokens: int = 0
    deltas: list[int] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)
    gateway_cpu_s: float = 0.0
    client_cpu_s: float = 0.0


async def one_round(side: Side, concurrency: int, tally: Tally, gateway: psutil.Process,
                    client: psutil.Process) -> None:
    """STREAMS_PER_ROUND streams, `concurrency` at a time: the same tokens whatever the concurrency."""
    done: list[Stream] = []

    async def worker() -> None:
        for _ in range(STREAMS_PER_ROUND // concurrency):
            try:
                done.append(await side())
            except StreamFailed as exc:
                tally.errors.append(str(exc))

    gateway_before, client_before = cpu_seconds(gateway), cpu_seconds(client)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    tally.gateway_cpu_s += cpu_seconds(gateway) - gateway_before
    tally.client_cpu_s += cpu_seconds(client) - client_before
    short = [s.tokens for s in done if s.tokens != MAX_TOKENS]
    if short:
        raise BenchError(f"streams reported {short} tokens, not {MAX_TOKENS}")
    tokens = sum(s.tokens for s in done)
    tally.rounds_tps.append(tokens / wall)
    tally.tokens += tokens
    tally.deltas += [s.deltas for s in done]
    tally.first_token_s += [s.first_token_s for s in done]


async def measure(base_url: str, gateway: psutil.Process, rounds: int) -> dict[int, dict[str, Tally]]:
    # A fresh connection per request and no client-side cap, as bench_proxy does.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        relay_body = chat_body(MODEL, MAX_TOKENS)
        sides: dict[str, Side] = {RELAY: lambda: stream_chat(session, base_url, relay_body)}
        for name, dialect in dialects(MAX_TOKENS).items():
            body = msgspec.json.encode(dialect.body)  # encoded once, as the relay's body is
            sides[name] = lambda d=dialect, b=body: stream_dialect(session, base_url, d, b)
        for side in sides.values():  # the first loads the engine
            for _ in range(WARMUP):
                await side()
        client = psutil.Process()
        out: dict[int, dict[str, Tally]] = {}
        for concurrency in CONCURRENCY:
            tallies = {name: Tally() for name in sides}
            for i in range(rounds):
                for name in rotation(list(sides), i):
                    await one_round(sides[name], concurrency, tallies[name], gateway, client)
            out[concurrency] = tallies
    return out


def rows(parallel: int, results: dict[int, dict[str, Tally]]) -> list[list[object]]:
    out = []
    for concurrency, tallies in results.items():
        relay = tallies[RELAY]
        relay_tps = statistics.median(relay.rounds_tps)
        for name, t in tallies.items():
            tps = statistics.median(t.rounds_tps)
            paired = statistics.median(x / r for x, r in zip(t.rounds_tps, relay.rounds_tps))
            # On a shared host the best round is the one least disturbed by others' work.
            best = max(t.rounds_tps) / max(relay.rounds_tps)
            meets = "-" if name == RELAY or concurrency != 16 else ("yes" if tps / relay_tps >= TARGET else "no")
            out.append([parallel, concurrency, name, f"{tps:.0f}", f"{tps / relay_tps:.3f}", f"{paired:.3f}",
                        f"{best:.3f}", meets, per_token_us(t.gateway_cpu_s, t.tokens),
                        per_token_us(t.client_cpu_s, t.tokens), ms(statistics.median(t.first_token_s)),
                        f"{min(t.deltas)}-{max(t.deltas)}", len(t.errors)])
    return out


def per_token_us(cpu_s: float, tokens: int) -> str:
    return f"{cpu_s / max(tokens, 1) * 1e6:.0f}"


def report(info: dict[str, object], results: dict[int, dict[int, dict[str, Tally]]], rounds: int) -> str:
    body = [row for parallel, r in results.items() for row in rows(parallel, r)]
    return "\n\n".join([
        machine_line(info),
        f"Streamed tokens/s on the cycle model, {STREAMS_PER_ROUND} streams of {MAX_TOKENS} tokens per round, "
        f"median of {rounds} interleaved rounds per side (target: dialect/relay >= {TARGET} at 16 streams)",
        table(["parallel", "streams", "side", "tok/s", "ratio vs relay", "paired median ratio", "best-round ratio",
               f">= {TARGET}",
               "gateway CPU us/token", "client CPU us/token", "median TTFT ms", "deltas per stream", "failed streams"],
              body),
    ])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_dialects", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per side and concurrency")
    parser.add_argument("--parallel", type=int, nargs="+", default=[4],
                        help="llama-server --parallel values to run (one instance each)")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    info = machine_info(llama_server_binary())
    results: dict[int, dict[int, dict[str, Tally]]] = {}
    with temp_dir("lmforge-bench-dialects-") as tmp:
        weights = write_cycle_model(tmp / "cycle.gguf")
        for parallel in args.parallel:
            with bench_instance(tmp / f"home-p{parallel}", {MODEL: weights},
                                f"[llama_cpp]\nparallel = {parallel}\n") as inst:
                gateway = psutil.Process(inst.procs["gateway"].pid)
                results[parallel] = await measure(inst.url, gateway, args.rounds)
    text = report(finish_machine_info(info), results, args.rounds)
    print(text)
    data = {p: {c: {name: vars(t) for name, t in tallies.items()} for c, tallies in r.items()}
            for p, r in results.items()}
    path = save_results("bench_dialects", {"machine": info, "args": vars(args), "results": data, "report": text})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    sys.exit(bench_main("bench_dialects", lambda argv: run(parse_args(argv)), sys.argv[1:]))
