"""Batched embeddings: 1,000 short inputs in one /v1/embeddings call to LMForge (split into
embed_batch_size chunks, at most llama_cpp.parallel in flight) against the same engine
called directly with the same chunks at the same concurrency, interleaved rounds.
Both ways must give the same vectors. Aim: gateway/direct >= 0.95 (inputs/s). The
gateway's CPU per call is the steadier figure on a shared host.

Run: python -m tests.bench.bench_embed [--rounds 5] [--inputs 1000] [--model tiny gemma]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np
import psutil

from tests.bench.harness import (
    BenchError, bench_instance, bench_main, cpu_seconds, engine_slot, finish_machine_info, gemma_gguf,
    llama_server_binary, machine_info, machine_line, rotation, save_results, table, temp_dir,
)
from tests.support.instance import Instance
from tests.support.tiny_models import write_embedding_model

TARGET = 0.95
_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    prompt_tokens: int


def texts(n: int) -> list[str]:
    return [f"sentence number {i} about topic {i % 37}" for i in range(n)]


async def post_embeddings(session: aiohttp.ClientSession, url: str, model: str, inputs: list[str]) -> Embedded:
    body = msgspec.json.encode({"model": model, "input": inputs, "encoding_format": "float"})
    async with session.post(url + "/v1/embeddings", data=body, headers={"Content-Type": "application/json"}) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise BenchError(f"{url}: HTTP {resp.status}: {raw[:300]!r}")
    reply = _decode(raw)
    data = sorted(reply["data"], key=lambda d: d["index"])
    return Embedded([d["embedding"] for d in data], reply["usage"]["prompt_tokens"])


async def direct(session: aiohttp.ClientSession, engine_url: str, model: str, inputs: list[str], batch: int,
                 parallel: int) -> Embedded:
    """What the gateway does, by hand: chunks of `batch`, at most `parallel` in flight, kept in order."""
    room = asyncio.Semaphore(parallel)

    async def one(chunk: list[str]) -> Embedded:
        async with room:
            return await post_embeddings(session, engine_url, model, chunk)

    parts = await asyncio.gather(*(one(inputs[i:i + batch]) for i in range(0, len(inputs), batch)))
    return Embedded([v for p in parts for v in p.vectors], sum(p.prompt_tokens for p in parts))


@dataclass
class Tally:
    rounds_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # the gateway's CPU during this side's rounds


def same_vectors(a: Embedded, b: Embedded) -> dict[str, Any]:
    x, y = np.asarray(a.vectors), np.asarray(b.vectors)
    if x.shape != y.shape:
        raise BenchError(f"gateway gave {x.shape} vectors, the engine {y.shape}")
    # Concurrent chunks share the engine's micro-batches in varying company, so float
    # sums may differ in the last bits; anything more is a real difference.
    return {"shape": list(x.shape), "max_abs_diff": float(np.max(np.abs(x - y))),
            "allclose": bool(np.allclose(x, y, rtol=1e-4, atol=1e-5)),
            "prompt_tokens": [a.prompt_tokens, b.prompt_tokens]}


async def measure(inst: Instance, model: str, args: argparse.Namespace) -> dict[str, Any]:
    inputs = texts(args.inputs)
    gateway = psutil.Process(inst.procs["gateway"].pid)
    # A fresh connection per request on both sides: what the gateway's own engine client does.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await post_embeddings(session, inst.url, model, inputs[:args.batch_size])  # loads the engine
        slot = engine_slot(inst, model)
        if slot is None or not slot["port"]:
            raise BenchError(f"no running engine for {model} after the warm-up request")
        engine_url = f"http://127.0.0.1:{slot['port']}"
        calls = {
            "gateway": lambda: post_embeddings(session, inst.url, model, inputs),
            "direct": lambda: direct(session, engine_url, model, inputs, args.batch_size, args.parallel),
        }
        tallies = {name: Tally() for name in calls}
        first: dict[str, Embedded] = {}  # each side's first answer, compared below
        for i in range(args.rounds):
            for name in rotation(list(calls), i):
                before, started = cpu_seconds(gateway), time.perf_counter()
                got = await calls[name]()
                tallies[name].rounds_s.append(time.perf_counter() - started)
                tallies[name].cpu_s.append(cpu_seconds(gateway) - before)
                first.setdefault(name, got)
    return {"check": same_vectors(first["gateway"], first["direct"]), "engine_port": slot["port"],
            "tallies": {n: vars(t) for n, t in tallies.items()}}


def row(model: str, args: argparse.Namespace, result: dict[str, Any]) -> list[object]:
    g, d = result["tallies"]["gateway"], result["tallies"]["direct"]
    gs, ds = statistics.median(g["rounds_s"]), statistics.median(d["rounds_s"])
    paired = statistics.median(y / x for x, y in zip(g["rounds_s"], d["rounds_s"]))
    best = min(d["rounds_s"]) / min(g["rounds_s"])  # on a shared host: the least disturbed call of each
    check = result["check"]
    return [model, args.inputs, args.batch_size, args.parallel, f"{args.inputs / ds:.0f}", f"{args.inputs / gs:.0f}",
            f"{ds / gs:.3f}", f"{paired:.3f}", f"{best:.3f}", "yes" if ds / gs >= TARGET else "no",
            f"{statistics.median(g['cpu_s']) * 1000:.0f}", f"{statistics.median(d['cpu_s']) * 1000:.0f}",
            "x".join(map(str, check["shape"])), f"{check['max_abs_diff']:.1e}", "yes" if check["allclose"] else "NO"]


def report(info: dict[str, object], results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    return "\n\n".join([
        machine_line(info),
        f"Embeddings of {args.inputs} short inputs, one call through LMForge vs the same chunks sent to the engine "
        f"directly; median of {args.rounds} interleaved rounds (target: gateway/direct >= {TARGET})",
        table(["model", "inputs", "batch", "parallel", "direct inputs/s", "gateway inputs/s", "gateway/direct",
               "paired median ratio", "best-call ratio", f">= {TARGET}", "gateway CPU ms (gateway round)",
               "gateway CPU ms (direct round)", "vectors", "max |diff|", "same vectors"],
              [row(m, args, r) for m, r in results.items()]),
    ])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_embed", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per side")
    parser.add_argument("--inputs", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32, help="embed_batch_size, and the direct chunk size")
    parser.add_argument("--parallel", type=int, default=4, help="llama_cpp.parallel, and the direct concurrency")
    parser.add_argument("--model", choices=["tiny", "gemma"], nargs="+", default=["tiny"],
                        help="the tiny generated embedding model, and/or Gemma 3 270M pooled (a realistic cost)")
    return parser.parse_args(argv)


def weights(tmp: Path, model: str) -> Path:
    return write_embedding_model(tmp / "embed.gguf") if model == "tiny" else gemma_gguf()


async def run(args: argparse.Namespace) -> None:
    info = machine_info(llama_server_binary())
    results: dict[str, dict[str, Any]] = {}
    config = f"embed_batch_size = {args.batch_size}\n[llama_cpp]\nparallel = {args.parallel}\n"
    with temp_dir("lmforge-bench-embed-") as tmp:
        models = {f"bench:{m}": weights(tmp, m) for m in args.model}
        with bench_instance(tmp / "home", models, config) as inst:
            for name in models:
                results[name] = await measure(inst, name, args)
    text = report(finish_machine_info(info), results, args)
    print(text)
    path = save_results("bench_embed", {"machine": info, "args": vars(args), "results": results, "report": text})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    sys.exit(bench_main("bench_embed", lambda argv: run(parse_args(argv)), sys.argv[1:]))
