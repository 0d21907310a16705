"""What a GGUF file's header says about the model: architecture, sizes, context, pooling.

A small reader of our own: it skips the tokenizer arrays instead of decoding them
(gguf.GGUFReader decodes every token in Python, tens of seconds on a real vocabulary)
and checks that every tensor lies inside the file, so a truncated download is caught.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

MAGIC = b"GGUF"

# GGUF value types -> struct format of a scalar (8 = string, 9 = array).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# llama.cpp's pooling_type enum as written in GGUF metadata.
POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


class GGUFError(ValueError):
    """The file is not a readable GGUF; the message says what is wrong."""


@dataclass
class GGUFInfo:
    path: Path
    size_bytes: int
    version: int
    metadata: dict[str, object]
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensor_count: int = 0
    parameters: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: int = 0) -> int:
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        if isinstance(value, list):  # per-layer arrays: the largest layer bounds memory
            return int(max(value)) if value else default
        return int(value)  # type: ignore[arg-type]

    @property
    def block_count(self) -> int:
        return self.arch_value("block_count")

    @property
    def embedding_length(self) -> int:
        return self.arch_value("embedding_length")

    @property
    def context_length(self) -> int:
        return self.arch_value("context_length")

    @property
    def head_count(self) -> int:
        return self.arch_value("attention.head_count")

    @property
    def head_count_kv(self) -> int:
        return self.arch_value("attention.head_count_kv", self.head_count)

    @property
    def key_length(self) -> int:
        heads = self.head_count or 1
        return self.arch_value("attention.key_length", self.embedding_length // heads)

    @property
    def value_length(self) -> int:
        heads = self.head_count or 1
        return self.arch_value("attention.value_length", self.embedding_length // heads)

    @property
    def vocab_size(self) -> int:
        return self.array_lengths.get("tokenizer.ggml.tokens", 0)

    @property
    def pooling(self) -> str | None:
        value = self.metadata.get(f"{self.architecture}.pooling_type")
        return None if value is None else POOLING.get(int(value), "unknown")  # type: ignore[arg-type]

    @property
    def quantization(self) -> str:
        value = self.metadata.get("general.file_type")
        if value is None:
            return ""
        try:
            return LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")  # type: ignore[arg-type]
        except ValueError:
            return f"type{value}"


def read_gguf_info(path: str | Path) -> GGUFInfo:
    path = Path(path)
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _Parser(buf, path).parse()
    except (OSError, ValueError, struct.error, IndexError, KeyError) as exc:
        if isinstance(exc, GGUFError):
            raise
        raise GGUFError(f"{path.name} is not a readable GGUF file: {exc}") from None


class _Parser:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.path = path
        self.pos = 0

    def take(self, fmt: str) -> object:
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        n = int(self.take("Q"))  # type: ignore[arg-type]
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path.name}: a string runs past the end of the file")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            n = struct.unpack_from("<Q", self.buf, self.pos)[0]
            self.pos += 8 + n

    def value(self, vtype: int) -> object:
        if vtype == _STRING:
            return self.string()
        return self.take(_SCALARS[vtype])

    def parse(self) -> GGUFInfo:
        if self.buf[:4] != MAGIC:
            raise GGUFError(f"{self.path.name} is not a GGUF file (no GGUF magic bytes)")
        self.pos = 4
        version = int(self.take("I"))  # type: ignore[arg-type]
        if version < 2:
            raise GGUFError(f"{self.path.name}: GGUF version {version} is too old")
        n_tensors, n_kv = int(self.take("Q")), int(self.take("Q"))  # type: ignore[arg-type]
        info = GGUFInfo(self.path, len(self.buf), version, {}, tensor_count=n_tensors)
        for _ in range(n_kv):
            self.read_kv(info)
        self.read_tensors(info)
        return info

    def read_kv(self, info: GGUFInfo) -> None:
        key = self.string()
        vtype = int(self.take("I"))  # type: ignore[arg-type]
        if vtype != _ARRAY:
            info.metadata[key] = self.value(vtype)
            return
        item_type, count = int(self.take("I")), int(self.take("Q"))  # type: ignore[arg-type]
        info.array_lengths[key] = count
        if item_type == _STRING:
            self.skip_strings(count)
        elif item_type in _SCALARS:
            fmt = _SCALARS[item_type]
            width = struct.calcsize("<" + fmt)
            if count <= 4096:  # small arrays (per-layer head counts) are worth keeping
                info.metadata[key] = list(struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos))
            self.pos += width * count
        else:
            raise GGUFError(f"{self.path.name}: nested array in metadata key {key}")

    def read_tensors(self, info: GGUFInfo) -> None:
        extents = []
        for _ in range(info.tensor_count):
            self.string()
            n_dims = int(self.take("I"))  # type: ignore[arg-type]
            dims = [int(self.take("Q")) for _ in range(n_dims)]  # type: ignore[arg-type]
            ggml_type, offset = int(self.take("I")), int(self.take("Q"))  # type: ignore[arg-type]
            elements = 1
            for d in dims:
                elements *= d
            info.parameters += elements
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            extents.append(offset + elements // block * type_size)
        alignment = int(info.metadata.get("general.alignment", 32))  # type: ignore[arg-type]
        data_start = -(-self.pos // alignment) * alignment
        end = data_start + max(extents, default=0)
        if end > len(self.buf):
            raise GGUFError(
                f"{self.path.name} is truncated: its tensors need {end} bytes, the file has {len(self.buf)}"
            )
