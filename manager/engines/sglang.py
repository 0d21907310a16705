"""SglangAdapter: how SGLang (`python -m sglang.launch_server`, Linux + NVIDIA) is installed, started, probed,
budgeted, and parked.

SGLang runs in a virtual environment of its own (venv.py). Its weights, KV cache and CUDA graphs live in VRAM, held
by its scheduler processes (one per GPU), children of the launched process. Flags checked against SGLang 0.5.23
(sglang/srt/arg_groups/fields/*.py, server_args.py); endpoints against sglang/srt/entrypoints/http_server.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from manager.config import Paths, Settings
from manager.context import start_ctx
from manager.engines.base import EngineMissing, MemoryPlan, PlanRefused, Progress
from manager.engines.gpus import gpu_environment, visible_gpus
from manager.engines.hf_config import kv_bytes_per_token, model_dir, positive_int, read_config, text_config
from manager.engines.venv import PipEngine
from manager.protocol import GpuInfo, HardwareSnapshot, ModelEntry, SlotKind
from prober.engine_choice import SERVES, SGLANG

GiB = 1024**3
# The release the flags and endpoints here were checked against. It needs CUDA 13 (torch 2.14 from PyPI), so an
# NVIDIA driver of 580 or newer; 0.5.19 was the last release built for CUDA 12.
SGLANG_VERSION = "0.5.23"
REQUIREMENTS = (f"sglang=={SGLANG_VERSION}",)
MIN_DRIVER = 580
KV_BYTES = 2  # bf16 keys and values (--kv-cache-dtype auto follows the model's bf16 weights)
# Per GPU, outside the static pool that --mem-fraction-static sizes: the CUDA context and NCCL buffers (taken before
# SGLang measures the memory it sizes the pool against), CUDA graphs and the activations of a chunked prefill.
# Not measured here (no GPU): the memory ledger learns the real figure from the first load.
CUDA_CONTEXT = 1 * GiB
RUNTIME_PER_GPU = 2 * GiB
# --mem-fraction-static stays within [FRACTION_FLOOR, sglang.mem_fraction_cap]. Above the cap, too little is left
# outside the static pool for the CUDA graphs and activations (SGLang's own defaults stay at or below 0.9). Below the
# floor, the pool is so thin that any error in our per-token estimate (SGLang pads pages and keeps its request tables
# inside the pool) fails the start with "Not enough memory". A fraction above the plan's need costs nothing: the KV
# pool is held to the plan by --max-total-tokens.
FRACTION_FLOOR = 0.1
TP_SIZES = (1, 2, 4, 8)
# --reasoning-parser by config.json model_type, for models whose template thinks (ModelEntry.thinking). An R1
# distill has its base model's type (qwen2, llama), so it is not told from its architecture: its <think> stays inline.
REASONING_PARSERS = {"qwen3": "qwen3", "qwen3_moe": "qwen3", "qwen3_next": "qwen3", "deepseek_v3": "deepseek-r1",
                     "glm4_moe": "glm45", "gpt_oss": "gpt-oss"}
# SGLang's log lines while it loads (model_runner.py, kv_cache_configurator.py, cuda_graph_setup.py), each with
# the load stage it opens; older releases spelled some differently, and both are recognised.
LOAD_MARKERS: tuple[tuple[str, str], ...] = (
    ("Load weight begin", "loading_weights"),
    ("Load weight end", "building_context"),  # the KV cache pool is sized and allocated next
    ("KV Cache is allocated", "building_context"),
    ("Memory pool end", "warming_up"),  # CUDA graphs are captured, then the server's own warm-up request
    ("Capture cuda graph begin", "warming_up"),  # older releases
    ("CUDA graph begin", "warming_up"),  # 0.5.23: "Capture target decode CUDA graph begin."
)
RELEASE = "/release_memory_occupation"
RESUME = "/resume_memory_occupation"
PARK_TIMEOUT_S = 300.0  # release copies the weights to host memory (and resume back): seconds per 10 GB or so
INDEX = "model.safetensors.index.json"


class EngineParkError(Exception):
    """SGLang did not release or resume its GPU memory; the message says what it answered."""


@dataclass(frozen=True)
class Placement:
    """The GPUs one SGLang engine runs on (NVML indexes), and the --mem-fraction-static that holds its plan."""

    gpus: tuple[int, ...]
    fraction: float


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files SGLang loads: those the index (model.safetensors.index.json) maps weights to when
    there is one (a repo's consolidated.safetensors is another copy of them), else every one."""
    try:
        index = json.loads((directory / INDEX).read_bytes())
        listed = set(index["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed = None
    return sorted(f for f in directory.glob("*.safetensors") if listed is None or f.name in listed)


def place(static: int, gpus: tuple[GpuInfo, ...], cap: float, heads: int) -> Placement:
    """The fewest GPUs (tensor parallel: 1, 2, 4 or 8, dividing the attention heads) that could hold `static`
    bytes (weights and KV cache) within `cap` of each, the freest first; as many as there are when none can.

    The fraction is of the memory free on them now, less the CUDA context: SGLang sizes its static pool as that
    fraction of the memory free when it starts (after its own context), not of the GPU's total, so a fraction of
    the total would leave a model too little room on a GPU another engine shares. When more is free at the start
    (an engine evicted meanwhile), --max-total-tokens keeps the KV pool to the plan."""
    if not gpus:
        raise ValueError("SGLang needs an NVIDIA GPU to place the model on")
    ranked = sorted(gpus, key=lambda g: (-g.vram_free, g.index))
    sizes = [n for n in TP_SIZES if n <= len(ranked) and (heads % n == 0 if heads else n == 1)] or [1]
    for n in sizes:
        chosen = ranked[:n]
        if static / n <= cap * (min(g.vram_total for g in chosen) - CUDA_CONTEXT) or n == sizes[-1]:
            break
    free = max(1, min(g.vram_free for g in chosen) - CUDA_CONTEXT)
    # Rounded up: the planned pool must fit.
    fraction = max(FRACTION_FLOOR, min(cap, math.ceil(static / n / free * 1000) / 1000))
    return Placement(tuple(sorted(g.index for g in chosen)), fraction)


def reasoning_parser(entry: ModelEntry) -> str | None:
    """The --reasoning-parser for a thinking model of a known architecture; None: its reasoning stays inline."""
    return REASONING_PARSERS.get(entry.architecture.lower()) if entry.thinking else None


def host_problem(hardware: HardwareSnapshot | None, *, check_driver: bool = True) -> str | None:
    """Why SGLang cannot run on this host, or None."""
    if hardware is None:
        return "the hardware has not been probed yet (SGLang's GPUs come from the probe): try again in a moment"
    if hardware.os != "linux":
        return f"SGLang runs on Linux with an NVIDIA GPU; this host runs {hardware.os}: use a GGUF build (llama.cpp)"
    nvidia = [g for g in hardware.gpus if g.vendor == "nvidia"]
    if not nvidia:
        return "SGLang needs an NVIDIA GPU and this host has none: use a GGUF build of the model (llama.cpp)"
    drivers = [int(g.driver.split(".")[0]) for g in nvidia if g.driver and g.driver.split(".")[0].isdigit()]
    if check_driver and drivers and min(drivers) < MIN_DRIVER:
        return (f"SGLang {SGLANG_VERSION} needs CUDA 13, an NVIDIA driver {MIN_DRIVER} or newer; this "
                f"host has {min(drivers)}: update the driver, or set sglang.requirements to an older SGLang")
    return None


class SglangAdapter:
    """python -m sglang.launch_server, one process group per (model, kind), on the GPUs its plan chose."""

    name = SGLANG
    formats, kinds = SERVES[SGLANG]
    # Readiness: SGLang answers 503 while it starts, then runs a one-token generation (skipped while it is busy
    # with requests, which show it alive). Each probe of a ready engine takes about a second.
    health_path = "/health_generate"
    # While parked no probe may generate: its memory is released (see park). /health does not generate when the
    # engine runs with SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION=0 (environment()).
    parked_health_path = "/health"
    load_markers = LOAD_MARKERS
    # Without a --reasoning-parser SGLang leaves <think> inline ("tags"); reasoning_for(entry) says per model.
    reasoning = "tags"
    parks = True

    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings = settings.sglang
        self.paths = paths
        self.pip = PipEngine(paths, self.name, python=self.settings.python, requirements=self.settings.requirements,
                             defaults=REQUIREMENTS, python_setting="sglang.python")

    @property
    def parallel(self) -> int:
        """Requests one engine runs at once (--max-running-requests): the leases its slot grants before queueing.
        SGLang batches continuously, so more cost KV cache only, which the plan sizes by context, not by request."""
        return self.settings.parallel


    def reasoning_for(self, entry: ModelEntry) -> str:
        """"field" when SGLang parses this model's reasoning into reasoning_content, else "tags"."""
        return "field" if reasoning_parser(entry) else "tags"

    def find_binary(self) -> Path | None:
        """The Python that runs `-m sglang.launch_server`: sglang.python, or our environment's once installed."""
        return self.pip.find_binary()

    def install(self, hardware: HardwareSnapshot, report: Progress) -> Path:
        """pip-install SGLang (torch and the CUDA libraries: several GB) into its own environment; refused up front
        on a host it cannot run on."""
        return self.pip.install(host_problem(hardware, check_driver=not self.settings.requirements), report)

    def environment(self, plan: MemoryPlan) -> dict[str, str]:
        return {
            # Only the GPUs the plan chose, numbered as NVML (and the prober) number them.
            **gpu_environment(plan),
            # /health then answers without generating: the probe a parked engine can take (parked_health_path).
            "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION": "0",
            # The model is on disk: the engine never fetches anything from the Hugging Face Hub.
            "HF_HUB_OFFLINE": "1",
        }

    def workaround(self, returncode: int, tail: str, applied: tuple[str, ...]) -> str | None:
        return None

    def plan(
        self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None, vram_budget: int,
        num_ctx: int = 0,
    ) -> MemoryPlan:
        """Everything in VRAM: the weights as on disk, bf16 keys and values for the context (one pool shared by the
        engine's requests, so one request may use all of it), and the runtime outside the static pool per GPU."""
        if problem := host_problem(hardware, check_driver=False):
            raise EngineMissing(problem)
        assert hardware is not None
        directory = model_dir(entry)
        config = text_config(read_config(directory))
        weights = sum(f.stat().st_size for f in weight_files(directory))
        if not weights:
            raise ValueError(f"no .safetensors weights in {directory}")
        per_token = kv_bytes_per_token(config, KV_BYTES)
        if not per_token:
            raise ValueError("config.json lacks num_hidden_layers or num_attention_heads: the KV cache cannot be "
                             "planned")
        ctx_max = positive_int(config, "max_position_embeddings") or entry.context_length
        ctx = start_ctx(self.settings.context_length, num_ctx, ctx_max)
        kv = per_token * ctx
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible_gpus(hardware.gpus, visible)
        if gpus is None:
            raise PlanRefused(f"SGLang is placed on GPUs by their index, and the manager's CUDA_VISIBLE_DEVICES "
                              f"({visible}) names them otherwise (UUIDs or MIG instances): list GPU indexes there, "
                              f"or unset it")
        if not gpus:
            raise PlanRefused(f"the manager's CUDA_VISIBLE_DEVICES ({visible}) shows SGLang none of this host's "
                              f"NVIDIA GPUs: list their indexes there, or unset it")
        heads = positive_int(config, "num_attention_heads")
        placement = place(weights + kv, gpus, self.settings.mem_fraction_cap, heads)
        # The plan carries the placement whole: command() and environment() read nothing else, so a plan read
        # back from an engine record starts the engine as it was planned.
        return MemoryPlan(
            weights=weights, kv_cache=kv, compute=(CUDA_CONTEXT + RUNTIME_PER_GPU) * len(placement.gpus), ctx_size=ctx,
            ctx_max=ctx_max,
            gpu_layers=positive_int(config, "num_hidden_layers") + 1,  # every layer and the output: all in VRAM
            gpus=placement.gpus, mem_fraction=placement.fraction,
        )

    def command(
        self, binary: Path, entry: ModelEntry, kind: SlotKind, port: int, plan: MemoryPlan,
        *, threads: int = 0, workarounds: tuple[str, ...] = (),
    ) -> list[str]:
        """The argv (`threads` is for CPU engines: SGLang computes on its GPUs), from the plan alone. Only a plan
        made by plan() can be started: guessing the GPUs and the fraction could take memory the budget gave to
        others."""
        if not (plan.gpus and plan.mem_fraction > 0):
            raise RuntimeError("this memory plan has no GPUs or memory fraction for SGLang: plan() did not make it")
        argv = [
            str(binary), "-m", "sglang.launch_server",
            "--model-path", str(model_dir(entry)),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--served-model-name", entry.name,
            "--context-length", str(plan.ctx_size),
            "--mem-fraction-static", f"{plan.mem_fraction:.3f}",
            # The KV pool holds the planned context, one pool shared by the engine's requests, however much the
            # fraction leaves room for.
            "--max-total-tokens", str(plan.ctx_size),
            "--tp-size", str(len(plan.gpus)),
            "--max-running-requests", str(self.parallel),
            # Parking (park/resume) frees memory only under the memory saver, and without the CPU backup the
            # weights would come back as whatever the re-mapped memory holds.
            "--enable-memory-saver", "--enable-weights-cpu-backup",
        ]
        if kind == SlotKind.EMBED:
            argv += ["--is-embedding"]
        elif parser := reasoning_parser(entry):
            argv += ["--reasoning-parser", parser]
        return argv + list(self.settings.extra_args)

    async def park(self, session: aiohttp.ClientSession, base_url: str) -> None:
        """Release the engine's GPU memory (weights to host memory, KV cache and CUDA graphs dropped), keeping the
        process. Only an idle engine may be parked: SGLang asserts that no request is running or waiting (a health
        probe's generation included), and a failed assertion there ends its scheduler, and the engine with it.
        Nothing may generate until resume: not a request, not a probe of health_path (see parked_health_path)."""
        await _memory_call(session, base_url, RELEASE, "release its GPU memory")

    async def resume(self, session: aiohttp.ClientSession, base_url: str) -> None:
        """Take the GPU memory back (weights copied back from host memory); the engine serves again after."""
        await _memory_call(session, base_url, RESUME, "resume its GPU memory")


async def _memory_call(session: aiohttp.ClientSession, base_url: str, path: str, what: str) -> None:
    """POST {} (no tags: weights, KV cache and CUDA graphs all) to one of SGLang's memory endpoints; it answers
    200 (body null) when done, else 400 with {"error": {"message": ...}}."""
    url = base_url.rstrip("/") + path
    try:
        async with session.post(url, json={}, timeout=aiohttp.ClientTimeout(total=PARK_TIMEOUT_S)) as resp:
            status, body = resp.status, await resp.text()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise EngineParkError(f"SGLang at {base_url} did not {what}: {path} failed ({exc or type(exc).__name__})"
                              ) from None
    if status != 200:
        raise EngineParkError(f"SGLang at {base_url} did not {what}: {path} answered {status}: {_message(body)}")


def _message(body: str) -> str:
    try:
        error = json.loads(body).get("error")
        return str(error.get("message") if isinstance(error, dict) else error)[:300]
    except (ValueError, AttributeError):
        return body.strip()[:300] or "no body"
