"""What llama-server allocates for one load, worked out from the GGUF header and its flags,
and which part of it fills only after the engine reports ready.

Measured on this build (CPU, 2 cores; tests/bench/bench_memory.py): at ready the weights,
the KV cache (llama.cpp zeroes it at load), the logits buffer and the tokenizer are
resident. Afterwards the compute graph's pages fill with the first full micro-batch,
sliding-window models keep context checkpoints per slot, and the host prompt cache
fills up to --cache-ram as sequences are swapped out.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog.gguf_info import GGUFInfo

MiB = 1024**2
F16 = 2
F32 = 4

# Code, libc/OpenMP runtime, HTTP threads and heap of an idle llama-server with a
# tiny vocabulary: a 0.4 MiB model is resident at 21 MiB, 2.4 MiB of it KV cache.
RUNTIME = 18 * MiB
# Tokenizer tables per vocabulary entry (token text, maps, piece caches):
# Gemma 3's 262k tokens take about 36 MiB at ready.
PER_VOCAB_TOKEN = 140
# Server buffers a burst of requests adds beyond the graph: request bodies, slot
# token lists, HTTP worker stacks (2 MiB measured with the tiny model; doubled).
BURST_SLACK = 4 * MiB
# llama_token_data (id, logit, p) per vocabulary entry, one array per slot's sampler.
SAMPLER_ENTRY = 12
# Context checkpoints each slot keeps from one long prompt (measured: two, one
# shortly before the prompt's end and one at it); a conversation continued turn
# after turn keeps adding up to --ctx-checkpoints (32), which only measurement sees.
CHECKPOINTS_PER_SLOT = 2
# Host prompt cache entries carry their token lists and allocator rounding on top
# of the state bytes that --cache-ram limits: 6 % measured with the tiny model.
PROMPT_CACHE_OVERHEAD = 1.08
# On a GPU host the KV cache and graph buffers are allocated in VRAM at load, so
# VRAM grows after ready only by what the CUDA backend creates on first use:
# cuBLAS workspaces, CUDA graphs and its temporary-buffer pool. Not measured here
# (no GPU on these machines); the measured term of the charge corrects it.
GPU_FIRST_USE = 64 * MiB

# Graph inputs (positions, output ids) and buffer alignment.
GRAPH_INPUTS = 256 * 1024

# llama.cpp's built-in sliding-window patterns (src/models/*.cpp load_swa_pattern):
# every n-th layer attends to the whole context; dense_first puts it at layer 0.
SWA_PATTERNS = {
    "gemma2": (2, False), "gemma3": (6, False), "gemma3n": (5, False), "gemma-embedding": (6, False),
    "cohere2": (4, False), "cohere2moe": (4, True), "exaone4": (4, False), "exaone-moe": (4, False),
    "llama4": (4, False), "olmo2": (4, False), "gpt-oss": (2, False), "afmoe": (4, False),
    "smallthinker": (4, True), "plamo3": (8, False), "modern-bert": (3, True),
}


@dataclass(frozen=True)
class Footprint:
    """Bytes llama-server holds for one load, by what they are for (weights not included)."""

    kv: int  # KV cache, resident from load on
    output: int  # logits of one token per slot, resident from the warm-up on
    runtime: int  # code, threads, tokenizer
    compute: int  # graph buffer: pages first touched by a full micro-batch
    sampler: int  # per-slot candidate arrays, first touched by sampling
    checkpoints: int  # sliding-window checkpoints of one long prompt per slot
    prompt_cache: int  # host prompt cache, up to --cache-ram

    @property
    def at_ready(self) -> int:
        return self.kv + self.output + self.runtime

    @property
    def growth(self) -> int:
        """RAM a CPU engine measured right after ready still grows by."""
        return self.compute + self.sampler + self.checkpoints + self.prompt_cache + BURST_SLACK


def footprint(info: GGUFInfo, *, ctx: int, parallel: int, ubatch: int, unified: bool,
              cache_ram_mb: int, chat: bool) -> Footprint:
    """What llama-server will hold for `info` served with these flags."""
    layers = max(_int(info.metadata.get(f"{info.architecture}.block_count")), 1)
    swa = swa_layers(info, layers)
    window = _window(info)
    cell = kv_cell_bytes(info)  # one token's K and V in one layer
    full_cells, swa_cells = kv_cells(ctx, parallel, ubatch, unified, window if swa else 0)
    vocab = info.vocab_size
    outputs = parallel if chat else 1
    return Footprint(
        kv=cell * ((layers - swa) * full_cells + swa * swa_cells),
        output=vocab * F32 * outputs,
        runtime=RUNTIME + vocab * PER_VOCAB_TOKEN,
        compute=compute_bytes(info, ubatch, full_cells + (swa_cells if swa else 0), outputs),
        sampler=vocab * SAMPLER_ENTRY * parallel if chat else 0,
        checkpoints=parallel * CHECKPOINTS_PER_SLOT * swa * window * cell if chat else 0,
        prompt_cache=int(cache_ram_mb * MiB * PROMPT_CACHE_OVERHEAD) if chat else 0,
    )


def swa_layers(info: GGUFInfo, layers: int) -> int:
    """How many layers use the sliding-window cache (0 when the model has no window)."""
    if not _window(info):
        return 0
    pattern = info.metadata.get(f"{info.architecture}.attention.sliding_window_pattern")
    if isinstance(pattern, list):  # one flag per layer
        return sum(1 for flag in pattern[:layers] if flag)
    n, dense_first = SWA_PATTERNS.get(info.architecture, (0, False))
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        n = pattern
    if n <= 0:
        return layers  # unknown pattern: every layer windowed, as llama.cpp does for n = 0
    if dense_first:
        return sum(1 for il in range(layers) if il % n != 0)
    return sum(1 for il in range(layers) if il % n < n - 1)


def kv_cells(ctx: int, parallel: int, ubatch: int, unified: bool, window: int) -> tuple[int, int]:
    """Cells of the full-context cache and of the sliding-window cache, as llama.cpp sizes them."""
    if unified:
        swa = min(ctx, window * parallel + ubatch) if window else 0
        return ctx, _pad(swa, 256)
    per_seq = ctx // max(parallel, 1)
    swa = _pad(min(per_seq, window + ubatch), 256) if window else 0
    return ctx, swa * parallel


def kv_cell_bytes(info: GGUFInfo) -> int:
    """f16 K and V of one token in one layer (the largest layer when they differ)."""
    heads_kv = max(info.head_count_kv, 1)
    return heads_kv * (info.key_length + info.value_length) * F16


def compute_bytes(info: GGUFInfo, ubatch: int, kv_cells_total: int, outputs: int) -> int:
    """The CPU graph buffer: attention masks, one micro-batch's activations, the logits.

    Fitted to what llama.cpp reserves with flash attention (its default where the
    backend has it): 9.1 MiB for the tiny model, 28.8 MiB for Gemma 3 270M.
    """
    arch = info.architecture
    n_ff = _int(info.metadata.get(f"{arch}.feed_forward_length"))
    q_width = max(info.head_count, 1) * info.key_length
    masks = F16 * ubatch * kv_cells_total
    activations = F32 * ubatch * (3 * n_ff + 2 * info.embedding_length + q_width)
    return masks + activations + F32 * info.vocab_size * outputs + GRAPH_INPUTS


def _window(info: GGUFInfo) -> int:
    return _int(info.metadata.get(f"{info.architecture}.attention.sliding_window"))


def _int(value: object) -> int:
    # Headers are user input: a list (per-layer values) counts by its largest entry,
    # anything that is not a number counts as absent.
    if isinstance(value, list):
        value = max((v for v in value if isinstance(v, (int, float))), default=0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return max(int(value), 0)


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to
