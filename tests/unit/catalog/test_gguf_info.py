"""Our GGUF header reader: the fields the estimate needs, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.gguf_info import GGUFError, read_gguf_info


def test_reads_the_shape_of_a_generated_model(models_dir: Path) -> None:
    info = read_gguf_info(models_dir / "chat.gguf")
    assert info.architecture == "llama"
    assert info.block_count > 0 and info.embedding_length > 0 and info.head_count > 0
    assert info.head_count_kv <= info.head_count
    assert info.context_length >= 256
    assert info.vocab_size > 256
    assert info.parameters > 0 and info.tensor_count > 0
    assert info.pooling is None


def test_reads_pooling_of_embedding_and_rerank_models(models_dir: Path) -> None:
    assert read_gguf_info(models_dir / "embed.gguf").pooling == "mean"
    assert read_gguf_info(models_dir / "rerank.gguf").pooling == "rank"


def test_reads_the_real_gemma_header_quickly(gemma_gguf: Path) -> None:
    info = read_gguf_info(gemma_gguf)
    assert (info.architecture, info.block_count, info.embedding_length) == ("gemma3", 18, 640)
    assert (info.head_count, info.head_count_kv, info.key_length) == (4, 1, 256)
    assert info.vocab_size == 262144 and info.quantization == "Q4_K_M"
    assert 260_000_000 < info.parameters < 280_000_000


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a readable GGUF"), (b"GGML" + b"\0" * 64, "no GGUF magic"), (b"GGUF\x03\0\0\0" + b"\xff" * 8, "readable")],
)
def test_bad_files_raise_a_named_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=message):
        read_gguf_info(path)
