"""Our GGUF header reader: the fields the estimate needs, and clear errors for bad files."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import gguf
import pytest

from catalog.gguf_info import GGUFError, read_gguf_info
from tests.support.gguf_patches import (
    KV_COUNT_AT, TENSOR, TENSOR_COUNT_AT, VERSION_AT, after, alignment_zero, patched, write_small,
)


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
    [(b"", "not a readable GGUF file: it is empty"), (b"GGML" + b"\0" * 64, "no GGUF magic"),
     (b"GGUF\x03\0\0\0" + b"\xff" * 8, "truncated")],
)
def test_bad_files_raise_a_named_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=message):
        read_gguf_info(path)


def test_a_directory_is_a_gguf_error_not_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot be read"):
        read_gguf_info(tmp_path)


# --- malformed headers, made by patching the bytes of a small valid file ---

HUGE = 2**62

# name -> (patch of the valid bytes, what the error must say)
MALFORMED: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "version 1": (lambda d: patched(d, VERSION_AT, "I", 1),
                  r"version 1 is not supported \(GGUF versions 2 and 3 are\)"),
    "version 4": (lambda d: patched(d, VERSION_AT, "I", 4), "version 4 is not supported"),
    "version 0": (lambda d: patched(d, VERSION_AT, "I", 0), "version 0 is not supported"),
    "version all ones": (lambda d: patched(d, VERSION_AT, "I", 0xFFFFFFFF), "version 4294967295 is not supported"),
    "big-endian": (lambda d: patched(d, VERSION_AT, "I", 0x03000000), "big-endian"),
    "huge tensor count": (lambda d: patched(d, TENSOR_COUNT_AT, "Q", HUGE), "more than a .*-byte file can hold"),
    "huge kv count": (lambda d: patched(d, KV_COUNT_AT, "Q", HUGE), "more than a .*-byte file can hold"),
    # The reader takes the tensor table for a metadata entry and trips on it.
    "kv count one too many": (lambda d: patched(d, KV_COUNT_AT, "Q", 9), "not a valid GGUF file"),
    "key length past the end": (lambda d: patched(d, after(d, "tiny.aaa") - 8 - 8, "Q", HUGE),
                                "a metadata key claims"),
    "string value past the end": (lambda d: patched(d, after(d, "general.architecture") + 4, "Q", HUGE),
                                  "metadata key general.architecture claims"),
    "number array count": (lambda d: patched(d, after(d, "tiny.numbers") + 8, "Q", HUGE),
                           f"tiny.numbers claims {HUGE} items"),
    "string array count": (lambda d: patched(d, after(d, "tiny.words") + 8, "Q", HUGE),
                           f"tiny.words claims {HUGE} items"),
    "string in an array past the end": (lambda d: patched(d, after(d, "tiny.words") + 16, "Q", HUGE),
                                        "a string in metadata key tiny.words claims"),
    "unknown value type": (lambda d: patched(d, after(d, "tiny.aaa"), "I", 13), "tiny.aaa has unknown value type 13"),
    "unknown array item type": (lambda d: patched(d, after(d, "tiny.numbers") + 4, "I", 77),
                                "tiny.numbers is an array of unknown type 77"),
    "nested array": (lambda d: patched(d, after(d, "tiny.numbers") + 4, "I", 9), "tiny.numbers is a nested array"),
    "duplicate key": (lambda d: d.replace(b"tiny.bbb", b"tiny.aaa"), "tiny.aaa appears twice"),
    "alignment 0": (alignment_zero, "general.alignment is 0; it must be a power of two"),
    "alignment 48": (lambda d: patched(d, after(d, "general.alignment") + 4, "I", 48), "general.alignment is 48"),
    "no dimensions": (lambda d: patched(d, after(d, TENSOR), "I", 0), f"tensor {TENSOR} has 0 dimensions"),
    "five dimensions": (lambda d: patched(d, after(d, TENSOR), "I", 5), f"tensor {TENSOR} has 5 dimensions"),
    "huge dimension count": (lambda d: patched(d, after(d, TENSOR), "I", 0xFFFFFFFF), "has 4294967295 dimensions"),
    "zero dimension": (lambda d: patched(d, after(d, TENSOR) + 4, "Q", 0), r"invalid dimensions \[0\]"),
    "elements past int64": (lambda d: patched(d, after(d, TENSOR) + 4, "Q", 2**64 - 1), "invalid dimensions"),
    "huge dimension": (lambda d: patched(d, after(d, TENSOR) + 4, "Q", 2**40), "truncated: its tensors need"),
    "unknown tensor type": (lambda d: patched(d, after(d, TENSOR) + 12, "I", 4), f"tensor {TENSOR} has unknown type 4"),
    "row not whole blocks": (lambda d: patched(d, after(d, TENSOR) + 12, "I", 12), "not a whole number of Q4_K blocks"),
    "misaligned offset": (lambda d: patched(d, after(d, TENSOR) + 16, "Q", 4), "not a multiple of the alignment 32"),
    "tensor past the end": (lambda d: patched(d, after(d, TENSOR) + 16, "Q", 2**40), "truncated: its tensors need"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_headers_are_refused_with_what_is_wrong(tmp_path: Path, case: str) -> None:
    patch, message = MALFORMED[case]
    data = write_small(tmp_path / "good.gguf")
    read_gguf_info(tmp_path / "good.gguf")  # the unpatched file is fine
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(patch(data))
    with pytest.raises(GGUFError, match=message) as err:
        read_gguf_info(bad)
    assert "\n" not in str(err.value) and str(err.value).startswith("bad.gguf")


ODD_VALUES: dict[str, tuple[Callable[[gguf.GGUFWriter], None], str]] = {
    "float context": (lambda w: w.add_float32("llama.embedding_length", 1.5), "llama.embedding_length is 1.5"),
    "string head count": (lambda w: w.add_string("llama.attention.head_count", "four"), "head_count is 'four'"),
    "bool key length": (lambda w: w.add_bool("llama.attention.key_length", True), "key_length is True"),
    "negative kv heads": (lambda w: w.add_int32("llama.attention.head_count_kv", -2), "head_count_kv is -2"),
    "float per-layer array": (lambda w: w.add_array("llama.attention.head_count", [1.0, 2.0]), "head_count is"),
    "string pooling": (lambda w: w.add_string("llama.pooling_type", "mean"), "pooling_type is 'mean'"),
    "string file type": (lambda w: w.add_string("general.file_type", "Q4"), "general.file_type is 'Q4'"),
}


@pytest.mark.parametrize("case", ODD_VALUES)
def test_odd_types_in_the_fields_we_read_are_refused(tmp_path: Path, case: str) -> None:
    add, message = ODD_VALUES[case]
    write_small(tmp_path / "odd.gguf", add)
    with pytest.raises(GGUFError, match=f"{message}.*must be a non-negative integer"):
        read_gguf_info(tmp_path / "odd.gguf")


def test_an_alignment_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    write_small(tmp_path / "odd.gguf", lambda w: w.add_string("general.alignment", "32"), alignment=False)
    with pytest.raises(GGUFError, match="general.alignment is '32'; it must be a power of two"):
        read_gguf_info(tmp_path / "odd.gguf")


def test_a_missing_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "noarch.gguf"
    path.write_bytes(write_small(path).replace(b"general.architecture", b"general.architecturX"))
    with pytest.raises(GGUFError, match="general.architecture is missing"):
        read_gguf_info(path)


def test_version_2_reads_like_version_3(tmp_path: Path) -> None:
    data = write_small(tmp_path / "v3.gguf")
    (tmp_path / "v2.gguf").write_bytes(patched(data, VERSION_AT, "I", 2))
    assert read_gguf_info(tmp_path / "v2.gguf").version == 2
    assert read_gguf_info(tmp_path / "v2.gguf").parameters == read_gguf_info(tmp_path / "v3.gguf").parameters == 64


def test_every_truncation_of_a_real_model_is_a_gguf_error(models_dir: Path, tmp_path: Path) -> None:
    data = (models_dir / "chat.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    # Every cut inside the header (where the parser could trip on a half-read field), then some in the data.
    header_end = data.index(b"blk.1.ffn_down.weight") + 64
    for length in [*range(0, header_end, 7), *range(header_end, len(data), len(data) // 50)]:
        cut.write_bytes(data[:length])
        with pytest.raises(GGUFError, match="truncated|past the end|empty|no GGUF magic|more than a"):
            read_gguf_info(cut)


def test_random_damage_to_a_header_never_escapes_as_another_exception(tmp_path: Path) -> None:
    data = write_small(tmp_path / "good.gguf")
    header_end = after(data, TENSOR) + 24
    rng = random.Random(12)  # seeded: the same damage on every run
    bad = tmp_path / "bad.gguf"
    refused = 0
    for _ in range(2000):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(4, header_end)] = rng.randrange(256)
        bad.write_bytes(bytes(damaged))
        try:
            read_gguf_info(bad)
        except GGUFError:
            refused += 1
    assert refused > 1000  # most damage is caught; the rest changed a value in a harmless way
