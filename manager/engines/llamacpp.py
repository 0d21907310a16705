"""LlamaCppAdapter: how llama.cpp's llama-server is started, probed and budgeted."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

from catalog.gguf_info import GGUFInfo, cached_gguf_info as gguf_info
from manager.budget import is_gpu_host
from manager.config import Paths, Settings
from manager.context import start_ctx
from manager.engines.base import EngineMissing, MemoryPlan, Progress
from manager.engines import llamacpp_build
from manager.engines.llamacpp_draft import DraftCost, draft_cost, find_draft
from manager.engines.gpus import gpu_environment
from manager.engines.llamacpp_gpus import place, split_args
from manager.engines.llamacpp_memory import GPU_FIRST_USE, Footprint, footprint
from manager.engines.llamacpp_stages import LOAD_MARKERS
from manager.protocol import HardwareSnapshot, ModelEntry, SlotKind
from prober.engine_choice import LLAMA_CPP, SERVES

MiB = 1024**2
NO_REPACK = "no_repack"  # the workaround for a build whose repacked (AMX) kernels trap: DESIGN.md, "CPU features"
# llama-server's default micro-batch (--ubatch-size), which chat slots keep.
LLAMA_UBATCH = 512
# Largest embedding/rerank input one request may carry: those need the whole
# input in one micro-batch.
MAX_POOLED_BATCH = 4096
# Embedding slots pool as the model declares; these are the poolings llama-server's --pooling takes besides none
# and rank, which /v1/embeddings cannot serve. A model that declares none of them (a chat model) pools by mean.
EMBED_POOLINGS = ("mean", "cls", "last")
# Speculative decoding with a draft model: llama-server loads --model-draft but drafts nothing without it.
SPEC_TYPE = "draft-simple"
# GGUFs without tokenizer.chat_template fall back to ChatML in llama-server, which
# makes e.g. Gemma talk nonsense; these architectures get their built-in template.
BUILTIN_TEMPLATES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "llama3": "llama3", "phi3": "phi3"}


def builtin_template(info: GGUFInfo) -> str | None:
    """The built-in template llama-server is told to use: for a file without its own, of an architecture with one."""
    return None if info.chat_template else BUILTIN_TEMPLATES.get(info.architecture)


def has_chat_template(info: GGUFInfo) -> bool:
    """Whether llama-server chats with the model through a real template: the file's own or a built-in one."""
    return bool(info.chat_template or builtin_template(info))


class LlamaCppAdapter:
    """llama-server, one process per (model, kind)."""

    name = "llama.cpp"
    formats, kinds = SERVES[LLAMA_CPP]  # chat, embeddings (--embeddings) and rerank (--reranking)
    health_path = "/health"
    load_markers = LOAD_MARKERS  # the log lines that tell a load's stages
    reasoning = "field"  # --reasoning-format deepseek: reasoning_content, whatever the template
    parks = False

    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings = settings.llama_cpp
        self.paths = paths
        self.memory_fraction = settings.memory_fraction  # of each GPU's free VRAM, for placement
        # Imported here: the store reads capabilities (catalog/capabilities.py), which import this module.
        from catalog.store import ModelStore

        self.store = ModelStore(paths)  # where drafts are found

    @property
    def parallel(self) -> int:
        """Requests one llama-server serves at once (--parallel): the leases its slot grants before queueing."""
        return self.settings.parallel


    def find_binary(self) -> Path | None:
        if self.settings.server:
            path = Path(self.settings.server).expanduser()
            if not path.is_file():
                raise EngineMissing(
                    f"LMFORGE_LLAMA_SERVER / llama_cpp.server points to {path}, which does not exist"
                )
            return path
        return llamacpp_build.installed_binary(self.paths)

    def install(self, hardware: HardwareSnapshot, report: Progress) -> Path:
        return llamacpp_build.install(self.paths, self.settings.version, hardware, report)

    def runs_on_cpu_only(self) -> bool:
        """Whether the llama-server we run was built for the CPU alone: the build that install() falls back to when
        a GPU build fails, which can offload nothing. A configured llama_cpp.server's build is not known: it is
        planned as the host's hardware calls for."""
        return not self.settings.server and llamacpp_build.installed_backend(self.paths) == "cpu"

    def environment(self, plan: MemoryPlan) -> dict[str, str]:
        return gpu_environment(plan)

    def workaround(self, returncode: int, tail: str, applied: tuple[str, ...]) -> str | None:
        """SIGILL while loading: a CPU-feature mismatch, which --no-repack avoids once (DESIGN.md, "CPU features")."""
        if returncode == -signal.SIGILL and NO_REPACK not in applied:
            return NO_REPACK
        return None

    def plan(
        self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None, vram_budget: int,
        num_ctx: int = 0,
    ) -> MemoryPlan:
        info = gguf_info(entry.path)
        ctx = start_ctx(self.settings.ctx_size, num_ctx, info.context_length or 0)
        held = self.footprint(info, kind, ctx)
        projector = Path(entry.mmproj).stat().st_size if entry.mmproj and kind == SlotKind.CHAT else 0
        draft = find_draft(entry, info, self.settings.drafts, self.store) if kind == SlotKind.CHAT else None
        cost = None if draft is None else draft_cost(draft, gguf_info(draft.path), ctx=ctx,
                                                     parallel=self.settings.parallel, ubatch=LLAMA_UBATCH)
        plan = MemoryPlan(
            weights=entry.size_bytes + projector,  # a chat slot loads the vision projector too
            kv_cache=held.kv,
            # Everything else the engine will hold at its peak, most of it only
            # after ready: see manager/engines/llamacpp_memory.py.
            compute=held.runtime + held.output + held.growth,
            ctx_size=ctx,
            ctx_max=info.context_length or 0,
            growth=held.growth,
            growth_gpu=GPU_FIRST_USE,
            draft=draft.path if draft else "",
        )
        return self._place_layers(plan, info.block_count, cost, hardware, vram_budget)

    def footprint(self, info: GGUFInfo, kind: SlotKind, ctx: int) -> Footprint:
        """What llama-server will hold for this model, served as `kind` with our command line."""
        chat = kind == SlotKind.CHAT
        return footprint(
            info, ctx=ctx, parallel=self.settings.parallel,
            ubatch=self._pooled_batch(ctx) if not chat else LLAMA_UBATCH,
            unified=chat,  # --kv-unified is passed for chat slots only
            cache_ram_mb=self.settings.cache_ram_mb, chat=chat,
        )

    def _pooled_batch(self, ctx: int) -> int:
        return min(ctx // self.settings.parallel, MAX_POOLED_BATCH)

    def _place_layers(self, plan: MemoryPlan, layers: int, draft: DraftCost | None,
                      hardware: HardwareSnapshot | None, vram_budget: int) -> MemoryPlan:
        """All layers on the GPU when they fit, as many as fit otherwise, none on a CPU host (or with a CPU-only
        build); the draft whole on the GPU first when it fits (it runs at every step), else on the CPU. On NVIDIA
        GPUs, which ones."""
        if not is_gpu_host(hardware) or self.runs_on_cpu_only():
            return plan if draft is None else _with_draft(plan, draft, growth=draft.growth)
        assert hardware is not None
        draft_ngl = 0
        if draft is not None and draft.total <= vram_budget:
            draft_ngl, vram_budget = draft.layers, vram_budget - draft.total
        per_layer = plan.weights / (layers + 1)
        if self.settings.gpu_layers is not None:
            ngl = min(self.settings.gpu_layers, layers + 1)
        elif plan.total <= vram_budget:
            ngl = layers + 1  # the output layer counts as one more
        else:
            room = vram_budget - plan.kv_cache - plan.compute
            ngl = max(0, min(layers, int(room // per_layer))) if per_layer else 0
        on_gpu = int(plan.weights * ngl / (layers + 1))
        plan = dataclasses.replace(plan, weights=on_gpu, gpu_layers=ngl, gpu_host=True, draft_gpu_layers=draft_ngl)
        if draft is not None and draft_ngl:
            plan = _with_draft(plan, draft)
        need = plan.total if ngl or draft_ngl else 0
        placement = place(hardware.gpus, need, int(per_layer), self.memory_fraction,
                          os.environ.get("CUDA_VISIBLE_DEVICES"))
        return dataclasses.replace(plan, gpus=placement.gpus, split=placement.split)

    def command(
        self, binary: Path, entry: ModelEntry, kind: SlotKind, port: int, plan: MemoryPlan,
        *, threads: int = 0, workarounds: tuple[str, ...] = (),
    ) -> list[str]:
        """The argv; `threads` (0: llama-server's own choice, kept by engines on a GPU) from the CPU plan."""
        argv = [
            str(binary),
            "--model", entry.path,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--alias", entry.name,
            "--ctx-size", str(plan.ctx_size),
            "--parallel", str(self.parallel),
            "--no-webui",
        ]
        if plan.gpu_layers or plan.gpu_host:
            argv += ["--n-gpu-layers", str(plan.gpu_layers)]
        argv += split_args(plan)
        if threads:
            # Prompt batches too: an engine must never run more threads than the cores it was given.
            argv += ["--threads", str(threads), "--threads-batch", str(threads)]
        info = gguf_info(entry.path)
        if kind == SlotKind.CHAT:
            # One KV cache shared by all sequences: a single long chat may use the whole context.
            argv += ["--kv-unified", "--cache-ram", str(self.settings.cache_ram_mb)]
            if entry.mmproj:
                argv += ["--mmproj", entry.mmproj]  # the vision projector imported with the model
            if entry.thinking:
                # Reasoning in its own field (reasoning_content), whatever the template: the gateway reads that,
                # and inline <think> tags from engines that do not parse them.
                argv += ["--reasoning-format", "deepseek"]
            argv += default_sampling(entry.options)
            if plan.draft:
                argv += ["--model-draft", plan.draft, "--spec-type", SPEC_TYPE]
                if plan.gpu_host:
                    argv += ["--gpu-layers-draft", str(plan.draft_gpu_layers)]
            if template := builtin_template(info):
                # Built-in names only work through the non-Jinja formatter; with Jinja
                # on, llama-server would take the name itself as the template text.
                argv += ["--no-jinja", "--chat-template", template]
        else:
            batch = str(self._pooled_batch(plan.ctx_size))
            # No host prompt cache: llama-server's default (8 GiB) would otherwise
            # fill with the states of past inputs, measured growing without bound.
            argv += ["--batch-size", batch, "--ubatch-size", batch, "--cache-ram", "0"]
        if kind == SlotKind.EMBED:
            argv += ["--embeddings", "--pooling", embedding_pooling(info)]
        if kind == SlotKind.RERANK:
            argv += ["--reranking"]
        if NO_REPACK in workarounds:
            # Avoids the repacked (AMX) kernels that trap on some virtual CPUs.
            argv += ["--no-repack"]
        return argv + list(self.settings.extra_args)


def embedding_pooling(info: GGUFInfo) -> str:
    """How an embedding slot pools: as the model declares, passed explicitly; by mean for a model that declares
    no pooling an embedding can come from (a chat model used for embeddings)."""
    return info.pooling if info.pooling in EMBED_POOLINGS else "mean"  # type: ignore[return-value]


def _with_draft(plan: MemoryPlan, draft: DraftCost, growth: int = 0) -> MemoryPlan:
    return dataclasses.replace(plan, weights=plan.weights + draft.weights, kv_cache=plan.kv_cache + draft.kv,
                               compute=plan.compute + draft.compute, growth=plan.growth + growth)


# Catalog defaults (ModelEntry.options) become the engine's own defaults: llama-server applies them to every request
# that does not set the field itself, in every dialect, at no cost on the request path.
SAMPLING_FLAGS = {
    "temperature": "--temp", "top_p": "--top-p", "top_k": "--top-k", "min_p": "--min-p",
    "repeat_penalty": "--repeat-penalty", "repeat_last_n": "--repeat-last-n",
    "presence_penalty": "--presence-penalty", "frequency_penalty": "--frequency-penalty", "typical_p": "--typical",
}


def default_sampling(options: dict[str, float | int | str | bool]) -> list[str]:
    argv: list[str] = []
    for key, value in sorted(options.items()):
        flag = SAMPLING_FLAGS.get(key)
        if flag is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            argv += [flag, str(value)]
    return argv
