"""A tiny random llama model in MLX's layout (config.json, model.safetensors, tokenizer.json, tokenizer_config.json
with a ChatML template), for tests that run a real mlx_lm.server.

mlx lives in the MLX engine's own virtual environment, never in LMForge's: `write_model(python, out)` runs this
file as a script under that environment's Python. Nothing above `main` imports anything outside the standard
library, so LMForge's side can import it too. The weights come from a fixed seed, so the same call writes the same
bytes; the output head is built so that the model never ends and writes printable ASCII only, one character a
token (see `_printable_only`): a reply always runs to max_tokens and has exactly that many characters. That holds
under greedy decoding only (temperature 0, as the tests ask): the silenced tokens keep logit 0, so sampling can
still draw them, the end token among them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 128
CONTEXT = 4096
BOS, IM_START, IM_END = "<|bos|>", "<|im_start|>", "<|im_end|>"
SPECIALS = (BOS, IM_START, IM_END)
CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# The bytes the model writes: token i of the byte alphabet is byte i. No space: a detokenizer may trim one.
FIRST_VISIBLE, LAST_VISIBLE = ord("!"), ord("~")
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def write_model(python: str | Path, out: Path, *, seed: int = 0, timeout: float = 120) -> Path:
    """Write the model into `out` with the MLX environment's `python`; `out` is returned once every file is there."""
    done = subprocess.run([str(python), __file__, str(out), str(seed)], capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"writing the tiny MLX model failed ({done.returncode}):\n{done.stderr[-3000:]}")
    missing = [name for name in FILES if not (out / name).is_file()]
    if missing:
        raise RuntimeError(f"the tiny MLX model in {out} lacks {', '.join(missing)}")
    return out


def byte_alphabet() -> list[str]:
    """GPT-2's byte-level spelling: each of the 256 bytes as one printable character, so that a byte-level BPE with
    no merges has one token per byte and can spell any text."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelled, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            spelled[byte] = chr(byte)
        else:
            spelled[byte] = chr(256 + extra)
            extra += 1
    return [spelled[byte] for byte in range(256)]


def _write_tokenizer(out: Path) -> tuple[int, int, int]:
    """tokenizer.json and tokenizer_config.json; returns the vocabulary's size and the ids of BOS and IM_END."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: i for i, char in enumerate(byte_alphabet())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIALS])
    tokenizer.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": IM_END,
              "pad_token": IM_END, "add_bos_token": False, "model_max_length": CONTEXT, "chat_template": CHATML}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tokenizer.get_vocab_size(), tokenizer.token_to_id(BOS), tokenizer.token_to_id(IM_END)


def _printable_only(head):  # type: ignore[no-untyped-def]
    """The output head with every token but the printable ASCII bytes silenced: their rows are zero (logit 0), and
    the rows of "a" and "b" are each other's negation, so one of those two always has a logit >= 0. The model thus
    never ends (its end token is silenced) and each token it writes is one visible character (ties with the
    silenced ones have measure zero)."""
    import mlx.core as mx

    allowed = mx.array([FIRST_VISIBLE <= i <= LAST_VISIBLE for i in range(head.shape[0])])[:, None]
    head = mx.where(allowed, head, mx.zeros_like(head))
    return head.at[ord("b")].add(-head[ord("b")] - head[ord("a")])


def _write_weights(out: Path, vocab_size: int, bos: int, end: int, seed: int) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
              "num_hidden_layers": LAYERS, "intermediate_size": FFN, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5, "vocab_size": vocab_size,
              "max_position_embeddings": CONTEXT, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "bos_token_id": bos, "eos_token_id": end, "torch_dtype": "float32"}
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    weights["lm_head.weight"] = _printable_only(weights["lm_head.weight"])
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))


def main(argv: list[str]) -> None:
    out, seed = Path(argv[0]), int(argv[1]) if len(argv) > 1 else 0
    out.mkdir(parents=True, exist_ok=True)
    vocab_size, bos, end = _write_tokenizer(out)
    _write_weights(out, vocab_size, bos, end, seed)


if __name__ == "__main__":
    main(sys.argv[1:])
