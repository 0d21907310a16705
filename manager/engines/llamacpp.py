"""LlamaCppAdapter: how llama.cpp's llama-server is started, probed and budgeted."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from catalog.gguf_info import GGUFInfo, read_gguf_info
from manager.budget import is_gpu_host
from manager.config import Paths, Settings
from manager.engines.base import EngineMissing, MemoryPlan
from manager.engines import llamacpp_build
from manager.protocol import HardwareSnapshot, ModelEntry, SlotKind

MiB = 1024**2
# Code, runtime and thread stacks of an idle llama-server, measured on this build.
PROCESS_OVERHEAD = 48 * MiB
# Largest embedding/rerank input one request may carry: those need the whole
# input in one micro-batch.
MAX_POOLED_BATCH = 4096
# GGUFs without tokenizer.chat_template fall back to ChatML in llama-server, which
# makes e.g. Gemma talk nonsense; these architectures get their built-in template.
BUILTIN_TEMPLATES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "llama3": "llama3", "phi3": "phi3"}


@lru_cache(maxsize=64)
def _gguf(path: str, mtime_ns: int) -> GGUFInfo:
    return read_gguf_info(path)


def gguf_info(path: str) -> GGUFInfo:
    return _gguf(path, Path(path).stat().st_mtime_ns)


class LlamaCppAdapter:
    """llama-server, one process per (model, kind)."""

    name = "llama.cpp"
    health_path = "/health"

    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings = settings.llama_cpp
        self.paths = paths

    def supports(self, entry: ModelEntry) -> bool:
        return entry.format == "gguf"

    def find_binary(self) -> Path | None:
        if self.settings.server:
            path = Path(self.settings.server).expanduser()
            if not path.is_file():
                raise EngineMissing(
                    f"LMFORGE_LLAMA_SERVER / llama_cpp.server points to {path}, which does not exist"
                )
            return path
        return llamacpp_build.installed_binary(self.paths)

    def plan(
        self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None, vram_budget: int
    ) -> MemoryPlan:
        info = gguf_info(entry.path)
        ctx = min(self.settings.ctx_size, info.context_length or self.settings.ctx_size)
        kv = info.block_count * ctx * info.head_count_kv * (info.key_length + info.value_length) * 2
        compute = PROCESS_OVERHEAD + self._compute_bytes(info, kind, ctx)
        plan = MemoryPlan(weights=entry.size_bytes, kv_cache=kv, compute=compute, ctx_size=ctx)
        return self._place_layers(plan, info.block_count, hardware, vram_budget)

    def _compute_bytes(self, info: GGUFInfo, kind: SlotKind, ctx: int) -> int:
        per_seq = ctx // self.settings.parallel
        ubatch = self._pooled_batch(ctx) if kind != SlotKind.CHAT else 512
        # Activations of one micro-batch, attention scores over the context,
        # then one row of logits per sequence; plus the host prompt cache.
        activations = ubatch * info.embedding_length * 4 * 8
        scores = ubatch * per_seq * max(info.head_count, 1) * 4
        logits = info.vocab_size * 4 * max(ubatch if kind == SlotKind.CHAT else 1, self.settings.parallel)
        cache = self.settings.cache_ram_mb * MiB if kind == SlotKind.CHAT else 0
        return activations + scores + logits + cache

    def _pooled_batch(self, ctx: int) -> int:
        return min(ctx // self.settings.parallel, MAX_POOLED_BATCH)

    def _place_layers(
        self, plan: MemoryPlan, layers: int, hardware: HardwareSnapshot | None, vram_budget: int
    ) -> MemoryPlan:
        """All layers on the GPU when they fit, as many as fit otherwise, none on a CPU host."""
        if not is_gpu_host(hardware):
            return plan
        if self.settings.gpu_layers is not None:
            ngl = min(self.settings.gpu_layers, layers + 1)
        elif plan.total <= vram_budget:
            ngl = layers + 1  # the output layer counts as one more
        else:
            per_layer = plan.weights / (layers + 1)
            room = vram_budget - plan.kv_cache - plan.compute
            ngl = max(0, min(layers, int(room // per_layer))) if per_layer else 0
        on_gpu = int(plan.weights * ngl / (layers + 1))
        return MemoryPlan(on_gpu, plan.kv_cache, plan.compute, plan.ctx_size, gpu_layers=ngl)

    def command(
        self, binary: Path, entry: ModelEntry, kind: SlotKind, port: int, plan: MemoryPlan,
        *, no_repack: bool = False,
    ) -> list[str]:
        argv = [
            str(binary),
            "--model", entry.path,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--alias", entry.name,
            "--ctx-size", str(plan.ctx_size),
            "--parallel", str(self.settings.parallel),
            "--no-webui",
        ]
        if plan.gpu_layers:
            argv += ["--n-gpu-layers", str(plan.gpu_layers)]
        info = gguf_info(entry.path)
        if kind == SlotKind.CHAT:
            # One KV cache shared by all sequences: a single long chat may use the whole context.
            argv += ["--kv-unified", "--cache-ram", str(self.settings.cache_ram_mb)]
            template = BUILTIN_TEMPLATES.get(info.architecture)
            if template and "tokenizer.chat_template" not in info.metadata:
                # Built-in names only work through the non-Jinja formatter; with Jinja
                # on, llama-server would take the name itself as the template text.
                argv += ["--no-jinja", "--chat-template", template]
        else:
            batch = str(self._pooled_batch(plan.ctx_size))
            argv += ["--batch-size", batch, "--ubatch-size", batch]
        if kind == SlotKind.EMBED:
            argv += ["--embeddings"]
            if info.pooling in (None, "none", "rank"):
                argv += ["--pooling", "mean"]  # a chat model used for embeddings
        if kind == SlotKind.RERANK:
            argv += ["--reranking"]
        if no_repack:
            # Avoids the repacked (AMX) kernels that trap on some virtual CPUs.
            argv += ["--no-repack"]
        return argv + list(self.settings.extra_args)
