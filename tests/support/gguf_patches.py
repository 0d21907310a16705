"""Small valid GGUF files and byte patches that break them, for the tests of what import refuses."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

TENSOR = "tiny.weight"
# Offsets in the fixed part of every GGUF header.
VERSION_AT, TENSOR_COUNT_AT, KV_COUNT_AT = 4, 8, 16


def write_small(path: Path, extra: Callable[[gguf.GGUFWriter], None] = lambda w: None, *,
                alignment: bool = True) -> bytes:
    """A valid GGUF with a few keys, a number array, a string array and one 64-float tensor; its bytes."""
    writer = gguf.GGUFWriter(path, "llama")
    if alignment:
        writer.add_custom_alignment(32)
    writer.add_context_length(256)
    writer.add_block_count(1)
    writer.add_array("tiny.numbers", [1, 2, 3])
    writer.add_array("tiny.words", ["ab", "cd"])
    writer.add_uint32("tiny.aaa", 1)
    writer.add_uint32("tiny.bbb", 2)
    extra(writer)
    writer.add_tensor(TENSOR, np.ones(64, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def after(data: bytes, key: str) -> int:
    """Offset of what follows a metadata key or tensor name: its value type, or a tensor's n_dims."""
    return data.index(key.encode()) + len(key)


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<" + fmt, out, offset, value)
    return bytes(out)


def alignment_zero(data: bytes) -> bytes:
    return patched(data, after(data, "general.alignment") + 4, "I", 0)
