"""Tiny llama-architecture GGUF models for tests that run a real llama-server.

Owns the shared byte-level vocabulary, the weight recipes and the writers.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

ARCH = "llama"
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
# Training context; large enough that LMForge's default ctx (8192) is not capped by it.
N_CTX = 16384

BOS = "<|bos|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# GPT-2 byte-level spelling: "Ġ" is the space byte, so these decode to
# " hello" and " world".
HELLO = "Ġhello"
WORLD = "Ġworld"

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Big enough that, after the output RMS norm scales a unit vector by
# sqrt(N_EMBD), the chosen logit beats every other one by hundreds: no
# temperature or sampler chain can pick anything else.
CYCLE_LOGIT = 100.0


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]

    def id(self, token: str) -> int:
        return self.tokens.index(token)


def write_chat_model(path: str | Path, *, seed: int = 0) -> Path:
    """Random-weight chat model with a ChatML template; serve it plainly."""
    vocab = build_vocab()
    return _write(path, "tiny-chat", vocab, _random_weights(len(vocab.tokens), seed))


def write_embedding_model(path: str | Path, *, seed: int = 0) -> Path:
    """Random-weight embedding model; serve with `--embeddings --pooling mean`."""
    vocab = build_vocab()
    weights = _random_weights(len(vocab.tokens), seed)
    return _write(path, "tiny-embed", vocab, weights, pooling=gguf.PoolingType.MEAN)


def write_rerank_model(path: str | Path, *, seed: int = 0) -> Path:
    """Random-weight reranker; serve with `--reranking`.

    With rank pooling and no classifier tensors, llama.cpp scores a pair by
    the first coordinate of the last token's normed hidden state.
    """
    vocab = build_vocab()
    weights = _random_weights(len(vocab.tokens), seed)
    return _write(path, "tiny-rerank", vocab, weights, pooling=gguf.PoolingType.RANK)


def write_cycle_model(path: str | Path) -> Path:
    """Chat model that streams " hello world hello world ..." and never ends.

    Only `max_tokens` (finish_reason "length") or the client stops it. A slot
    holds prompt plus output: `--ctx-size 2048 --parallel 2` gives 1024-token
    slots, so ask for `--ctx-size 8192` (or `--kv-unified`) before streaming
    2000 tokens.
    """
    vocab = build_vocab()
    return _write(path, "tiny-cycle", vocab, _cycle_weights(vocab))


def write_duplicate_token_model(path: str | Path) -> Path:
    """Chat model whose vocabulary repeats a token, so llama-server dies at load.

    About 5 ms after "load_model: loading model '...'", llama-server prints
    ".../src/llama-vocab.cpp:2578: GGML_ASSERT(id_to_token.size() ==
    token_to_id.size()) failed" and aborts: SIGABRT, returncode -6 from Popen
    (134 from a shell), before /health ever answers 200. Where gdb is
    installed, ggml appends a backtrace, so the assert is not the last line.
    """
    vocab = build_vocab()
    broken = Vocab(vocab.tokens + [HELLO], vocab.types + [gguf.TokenType.NORMAL], vocab.merges)
    return _write(path, "tiny-broken", broken, _random_weights(len(broken.tokens), 0))


def variant(models_dir: Path, name: str, *args: str) -> Path:
    """The cycle model (cycle.gguf in `models_dir`) with metadata changed by gguf's own tool, once."""
    out = models_dir / name
    if not out.exists():
        subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(models_dir / "cycle.gguf"),
                        str(out), *args, "--force"], check=True, capture_output=True)
    return out


# A Qwen3-like template: a thought opened by the prompt unless thinking is off, and an assistant turn's
# reasoning_content shown as a closed thought. Its markers make the model "thinking" in the index.
THINK_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' and message.get('reasoning_content') -%}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- message['content'] or '' -}}"
    "{%- if not (loop.last and message['role'] == 'assistant') -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- else -%}{{- '<think>\\n' -}}{%- endif -%}{%- endif -%}"
)


def build_vocab() -> Vocab:
    """256 byte tokens, two whole-word tokens with their merges, then specials."""
    tokens = _byte_tokens()
    merges: list[str] = []
    for word in (HELLO, WORLD):
        word_tokens, word_merges = _merge_chain(word)
        tokens += word_tokens
        merges += word_merges
    types = [gguf.TokenType.NORMAL] * len(tokens)
    tokens += [BOS, IM_START, IM_END]
    types += [gguf.TokenType.CONTROL] * 3
    return Vocab(tokens, types, merges)


def _byte_tokens() -> list[str]:
    # GPT-2 byte-level BPE gives every byte a printable character: printable
    # Latin-1 bytes stand for themselves, the rest take code points from 256 up.
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in chars)
    chars.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return [chars[b] for b in range(256)]


def _merge_chain(word: str) -> tuple[list[str], list[str]]:
    # Left-to-right merges so the tokenizer turns the word's bytes back into
    # the word token; every intermediate must be a token of its own.
    tokens, merges = [], []
    for end in range(2, len(word) + 1):
        merges.append(f"{word[:end - 1]} {word[end - 1]}")
        tokens.append(word[:end])
    return tokens, merges


def _random_weights(n_vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {}
    for name in _tensor_names():
        shape = _shape(name, n_vocab)
        if len(shape) == 1:
            weights[name] = np.ones(shape, np.float32)
        else:
            weights[name] = _scaled_normal(rng, shape)
    return weights


def _scaled_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random weights scaled by 1/sqrt(fan_in), which keeps activations O(1) through the layers."""
    return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)


def _cycle_weights(vocab: Vocab) -> dict[str, np.ndarray]:
    # Zero attention-output and FFN-down weights leave the residual stream
    # equal to the current token's embedding, so the head sees one marker:
    # hello -> e0, world -> e1, anything else -> e2.
    n_vocab = len(vocab.tokens)
    hello, world = vocab.id(HELLO), vocab.id(WORLD)
    weights = {}
    for name in _tensor_names():
        shape = _shape(name, n_vocab)
        fill = np.ones if len(shape) == 1 else np.zeros
        weights[name] = fill(shape, np.float32)

    embd = weights["token_embd.weight"]
    embd[:, 2] = 1.0
    embd[[hello, world], 2] = 0.0
    embd[hello, 0] = 1.0
    embd[world, 1] = 1.0

    head = weights["output.weight"]
    head[world, 0] = CYCLE_LOGIT
    head[hello, 1] = CYCLE_LOGIT
    head[hello, 2] = CYCLE_LOGIT
    return weights


_HEAD_DIM = N_EMBD // N_HEAD
_GLOBAL = ("token_embd.weight", "output_norm.weight", "output.weight")
_PER_LAYER = (
    "attn_norm.weight",
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_norm.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
)


def _tensor_names() -> list[str]:
    blocks = [f"blk.{i}.{name}" for i in range(N_LAYER) for name in _PER_LAYER]
    return [*_GLOBAL, *blocks]


def _shape(name: str, n_vocab: int) -> tuple[int, ...]:
    """numpy shape (outputs, inputs); GGUF stores it reversed. 1-D are norms."""
    base = name.split(".", 2)[2] if name.startswith("blk.") else name
    kv = N_HEAD_KV * _HEAD_DIM
    return {
        "token_embd.weight": (n_vocab, N_EMBD),
        "output.weight": (n_vocab, N_EMBD),
        "attn_q.weight": (N_EMBD, N_EMBD),
        "attn_k.weight": (kv, N_EMBD),
        "attn_v.weight": (kv, N_EMBD),
        "attn_output.weight": (N_EMBD, N_EMBD),
        "ffn_gate.weight": (N_FF, N_EMBD),
        "ffn_up.weight": (N_FF, N_EMBD),
        "ffn_down.weight": (N_EMBD, N_FF),
    }.get(base, (N_EMBD,))


def _write(
    path: str | Path,
    name: str,
    vocab: Vocab,
    weights: dict[str, np.ndarray],
    *,
    pooling: gguf.PoolingType | None = None,
) -> Path:
    path = Path(path)
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_hparams(writer)
    if pooling is not None:
        writer.add_pooling_type(pooling)
    _add_tokenizer(writer, vocab)
    return _save(writer, weights, path)


def _save(writer: gguf.GGUFWriter, weights: dict[str, np.ndarray], path: Path) -> Path:
    """Add the tensors after the metadata, and write the file out."""
    for tensor_name, array in weights.items():
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_hparams(writer: gguf.GGUFWriter) -> None:
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(_HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)


def _add_tokenizer(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    # llama-server refuses to rerank with a vocabulary lacking BOS or EOS ids.
    writer.add_bos_token_id(vocab.id(BOS))
    writer.add_eos_token_id(vocab.id(IM_END))
    writer.add_eot_token_id(vocab.id(IM_END))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)


MMPROJ_IMAGE = 32  # pixels a side
MMPROJ_PATCH = 8
MMPROJ_WIDTH = 32
MMPROJ_FF = 64
MMPROJ_BLOCKS = 2
MMPROJ_TOKENS = (MMPROJ_IMAGE // MMPROJ_PATCH) ** 2  # the prompt tokens one image becomes


def write_mmproj(path: str | Path, *, seed: int = 0) -> Path:
    """A random-weight LLaVA-1.5-style vision projector (architecture `clip`) for the chat models.

    `llama-server -m chat.gguf --mmproj mmproj.gguf` then answers chats with
    `image_url` parts; each image costs MMPROJ_TOKENS prompt tokens. Its output
    width (mm.2) is the text model's embedding length, as llama.cpp requires.
    """
    path = Path(path)
    writer = gguf.GGUFWriter(path, "clip")
    writer.add_name("tiny-mmproj")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", True)
    for key, value in (("image_size", MMPROJ_IMAGE), ("patch_size", MMPROJ_PATCH),
                       ("embedding_length", MMPROJ_WIDTH), ("feed_forward_length", MMPROJ_FF),
                       ("projection_dim", N_EMBD), ("attention.head_count", N_HEAD),
                       ("block_count", MMPROJ_BLOCKS)):
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    return _save(writer, _mmproj_weights(np.random.default_rng(seed)), path)


def _mmproj_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def matrix(*shape: int) -> np.ndarray:
        return _scaled_normal(rng, shape)

    def norm(prefix: str, width: int) -> dict[str, np.ndarray]:
        return {f"{prefix}.weight": np.ones(width, np.float32), f"{prefix}.bias": np.zeros(width, np.float32)}

    w = MMPROJ_WIDTH
    weights = {"v.patch_embd.weight": matrix(w, 3, MMPROJ_PATCH, MMPROJ_PATCH),
               "v.position_embd.weight": matrix(MMPROJ_TOKENS, w), **norm("v.pre_ln", w)}
    linear = {"attn_q": (w, w), "attn_k": (w, w), "attn_v": (w, w), "attn_out": (w, w),
              "ffn_up": (MMPROJ_FF, w), "ffn_down": (w, MMPROJ_FF)}
    shapes = {f"v.blk.{i}.{n}": s for i in range(MMPROJ_BLOCKS) for n, s in linear.items()}
    shapes |= {"mm.0": (N_EMBD, w), "mm.2": (N_EMBD, N_EMBD)}  # the projector; mm.1 is the GELU between
    for i in range(MMPROJ_BLOCKS):
        weights |= norm(f"v.blk.{i}.ln1", w) | norm(f"v.blk.{i}.ln2", w)
    for name, shape in shapes.items():
        weights[f"{name}.weight"] = matrix(*shape)
        weights[f"{name}.bias"] = np.zeros(shape[0], np.float32)
    return weights


WRITERS = {
    "chat.gguf": write_chat_model,
    "embed.gguf": write_embedding_model,
    "rerank.gguf": write_rerank_model,
    "cycle.gguf": write_cycle_model,
    "broken.gguf": write_duplicate_token_model,
    "mmproj.gguf": write_mmproj,
}


def write_all(outdir: str | Path) -> dict[str, Path]:
    """Every model into `outdir`, keyed by file stem (chat, embed, rerank, cycle, broken, mmproj)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return {Path(name).stem: write(outdir / name) for name, write in WRITERS.items()}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.support.tiny_models OUTDIR", file=sys.stderr)
        return 2
    for path in write_all(argv[0]).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
