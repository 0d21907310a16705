"""What the engines that load a Hugging Face model directory (MLX, SGLang) read from it: the directory itself, its
config.json (the text model's part of a vision model's), and the KV cache one token takes.

Each engine keeps its own choice of weight files: they load different ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from manager.protocol import ModelEntry


def model_dir(entry: ModelEntry) -> Path:
    """The directory the engine is given: the one holding config.json, the tokenizer and the weights."""
    if entry.dir:
        return Path(entry.dir)
    path = Path(entry.path)
    return path if path.is_dir() else path.parent


def read_config(directory: Path) -> dict[str, Any]:
    """config.json as a JSON object; ValueError saying why when there is none to read."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the model's config.json in {directory}: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with its text model's part (a vision model's text_config) over it: the part that has the
    layers and heads the KV cache is made of."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def positive_int(config: dict[str, Any], key: str) -> int:
    """config[key] when it is a positive integer (not a bool); 0 when absent or anything else."""
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def kv_bytes_per_token(config: dict[str, Any], dtype_bytes: int) -> int:
    """Bytes of KV cache one token takes over every layer, at `dtype_bytes` per value; 0 when the config lacks the
    layer or head count. MLA models (DeepSeek V2/V3: kv_lora_rank) keep one compressed latent and one rope key per
    layer instead of keys and values per KV head; both SGLang and mlx_lm cache them so."""
    layers, heads = positive_int(config, "num_hidden_layers"), positive_int(config, "num_attention_heads")
    if not (layers and heads):
        return 0
    if latent := positive_int(config, "kv_lora_rank"):
        return layers * (latent + positive_int(config, "qk_rope_head_dim")) * dtype_bytes
    head_dim = positive_int(config, "head_dim") or positive_int(config, "hidden_size") // heads
    kv_heads = positive_int(config, "num_key_value_heads") or heads
    return 2 * layers * kv_heads * head_dim * dtype_bytes
