"""What a GGUF file's header says about the model: architecture, sizes, context, pooling.

A small reader of our own: it skips the tokenizer arrays instead of decoding them
(gguf.GGUFReader decodes every token in Python, tens of seconds on a real vocabulary).
It refuses, as GGUFError, whatever llama.cpp would refuse: a damaged or truncated header,
bad counts, tensors, alignment or version, and odd types in the fields LMForge reads.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

MAGIC = b"GGUF"
# llama.cpp reads versions 2 and 3; version 1 (pre-2023) used 32-bit counts.
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # bytes, with the C string's terminating NUL
INT64_MAX = 2**63 - 1
# The smallest encodings of one metadata entry (key length, value type, a
# one-byte value) and one tensor (name length, n_dims, one dim, type, offset):
# counts that need more bytes than the file has are refused before any loop.
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8

# GGUF value types -> struct format of a scalar (8 = string, 9 = array).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# llama.cpp's pooling_type enum as written in GGUF metadata.
POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"

# `<arch>.<key>` fields the memory estimate and the engine command read as counts.
_ARCH_INTEGERS = ("block_count", "embedding_length", "context_length", "attention.head_count",
                  "attention.head_count_kv", "attention.key_length", "attention.value_length", "pooling_type")


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
    def chat_template(self) -> str:
        """The Jinja chat template the file carries; empty when it has none."""
        value = self.metadata.get(CHAT_TEMPLATE_KEY)
        return value if isinstance(value, str) else ""

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


def cached_gguf_info(path: str | Path) -> GGUFInfo:
    """read_gguf_info, read once per file version: its size and mtime key the cache, so a replaced file is read again."""
    stat = os.stat(path)
    return _cached(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _cached(path: str, mtime_ns: int, size: int) -> GGUFInfo:
    return read_gguf_info(path)


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """The header of `path`; any fault in the file, whatever it is, comes out as GGUFError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise GGUFError(f"{path.name} is not a readable GGUF file: it is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _Parser(buf, path.name).parse(path)
    except GGUFError:
        raise
    except OSError as exc:
        raise GGUFError(f"{path.name} cannot be read: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - the caller (import, or one slot's plan) must get one error type
        raise GGUFError(f"{path.name} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None


class _Parser:
    """Reads a header front to back; every length and count is checked against the bytes left first."""

    def __init__(self, buf: mmap.mmap, name: str) -> None:
        self.buf = buf
        self.name = name
        self.pos = 0
        self.keys: set[str] = set()

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.name} is not a valid GGUF file: {problem}")

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, fmt: str) -> object:
        width = struct.calcsize("<" + fmt)
        if width > self.left:
            raise GGUFError(f"{self.name} is truncated: its header stops at byte {len(self.buf)}")
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += width
        return value

    def count(self) -> int:
        return int(self.take("Q"))  # type: ignore[arg-type]

    def string(self, what: str) -> str:
        n = self.count()
        if n > self.left:
            raise self.fail(f"{what} claims {n} bytes, past the end of the file")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, key: str, count: int) -> None:
        for _ in range(count):  # bounded: count * 8 <= bytes left, checked by the caller
            n = self.count()
            if n > self.left:
                raise self.fail(f"a string in metadata key {key} claims {n} bytes, past the end of the file")
            self.pos += n

    def parse(self, path: Path) -> GGUFInfo:
        if self.buf[:4] != MAGIC:
            raise GGUFError(f"{self.name} is not a GGUF file (no GGUF magic bytes)")
        self.pos = 4
        version = self.check_version(int(self.take("I")))  # type: ignore[arg-type]
        n_tensors, n_kv = self.count(), self.count()
        # Refused before any loop: a damaged count must not make us iterate or allocate for ages.
        if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES > self.left:
            raise self.fail(f"its header claims {n_kv} metadata keys and {n_tensors} tensors, "
                            f"more than a {len(self.buf)}-byte file can hold")
        info = GGUFInfo(path, len(self.buf), version, {}, tensor_count=n_tensors)
        for _ in range(n_kv):
            self.read_kv(info)
        check_metadata(info, self.fail)
        self.read_tensors(info)
        return info

    def check_version(self, version: int) -> int:
        if version in SUPPORTED_VERSIONS:
            return version
        if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
            raise GGUFError(f"{self.name} is a big-endian GGUF file; llama.cpp here reads little-endian GGUF only")
        raise GGUFError(f"{self.name}: GGUF version {version} is not supported (GGUF versions 2 and 3 are)")

    def read_kv(self, info: GGUFInfo) -> None:
        key = self.string("a metadata key")
        if key in self.keys:
            raise self.fail(f"metadata key {key} appears twice")
        self.keys.add(key)
        vtype = int(self.take("I"))  # type: ignore[arg-type]
        if vtype == _STRING:
            info.metadata[key] = self.string(f"metadata key {key}")
        elif vtype in _SCALARS:
            info.metadata[key] = self.take(_SCALARS[vtype])
        elif vtype == _ARRAY:
            self.read_array(info, key)
        else:
            raise self.fail(f"metadata key {key} has unknown value type {vtype}")

    def read_array(self, info: GGUFInfo, key: str) -> None:
        item_type, count = int(self.take("I")), self.count()  # type: ignore[arg-type]
        if item_type == _STRING:
            width = 8  # each string's length field, at least
        elif item_type in _SCALARS:
            width = struct.calcsize("<" + _SCALARS[item_type])
        elif item_type == _ARRAY:
            raise self.fail(f"metadata key {key} is a nested array, which llama.cpp does not read")
        else:
            raise self.fail(f"metadata key {key} is an array of unknown type {item_type}")
        if count * width > self.left:
            raise self.fail(f"metadata key {key} claims {count} items, past the end of the file")
        info.array_lengths[key] = count
        if item_type == _STRING:
            self.skip_strings(key, count)
            return
        if count <= 4096:  # small arrays (per-layer head counts) are worth keeping
            info.metadata[key] = list(struct.unpack_from(f"<{count}{_SCALARS[item_type]}", self.buf, self.pos))
        self.pos += width * count

    def read_tensors(self, info: GGUFInfo) -> None:
        alignment = int(info.metadata.get("general.alignment", DEFAULT_ALIGNMENT))  # type: ignore[arg-type]
        names: set[str] = set()
        end = 0
        for _ in range(info.tensor_count):
            name, elements, nbytes, offset = self.read_tensor(alignment)
            if name in names:
                raise self.fail(f"tensor {name} appears twice")
            names.add(name)
            info.parameters += elements
            end = max(end, offset + nbytes)
        data_start = -(-self.pos // alignment) * alignment
        if data_start + end > len(self.buf):
            raise GGUFError(f"{self.name} is truncated: its tensors need {data_start + end} bytes, "
                            f"the file has {len(self.buf)}")

    def read_tensor(self, alignment: int) -> tuple[str, int, int, int]:
        """(name, elements, bytes, offset into the data section) of one tensor, checked as llama.cpp does."""
        name = self.string("a tensor name")
        if len(name.encode()) >= GGML_MAX_NAME:
            raise self.fail(f"tensor name {name[:GGML_MAX_NAME]}... is longer than {GGML_MAX_NAME - 1} bytes")
        n_dims = int(self.take("I"))  # type: ignore[arg-type]
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            raise self.fail(f"tensor {name} has {n_dims} dimensions (1 to {GGML_MAX_DIMS} are valid)")
        dims = [self.count() for _ in range(n_dims)]
        elements = math.prod(dims)
        if min(dims) < 1 or elements > INT64_MAX:
            raise self.fail(f"tensor {name} has invalid dimensions {dims}")
        ggml_type, offset = int(self.take("I")), self.count()  # type: ignore[arg-type]
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise self.fail(f"tensor {name} has unknown type {ggml_type}") from None
        if dims[0] % block:
            raise self.fail(f"tensor {name}: a row of {dims[0]} is not a whole number of "
                            f"{GGMLQuantizationType(ggml_type).name} blocks of {block}")
        if offset % alignment:
            raise self.fail(f"tensor {name} starts at offset {offset}, not a multiple of the alignment {alignment}")
        return name, elements, elements // block * type_size, offset


def check_metadata(info: GGUFInfo, fail: Callable[[str], GGUFError]) -> None:
    """The fields LMForge reads must have the types it reads them as, so no later step trips on them."""
    arch = info.metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise fail("general.architecture is missing or not a string")
    alignment = info.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise fail(f"general.alignment is {alignment!r}; it must be a power of two")
    for key in ("general.file_type", *(f"{arch}.{k}" for k in _ARCH_INTEGERS)):
        value = info.metadata.get(key, 0)
        values = value if isinstance(value, list) else [value]
        # bool is an int in Python, but not a count in a header.
        if not all(type(v) is int and v >= 0 for v in values):
            raise fail(f"metadata key {key} is {_show(value)}; it must be a non-negative integer")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
