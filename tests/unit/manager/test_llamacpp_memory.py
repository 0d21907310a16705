"""What llama-server holds for a load, from the header: checked against what llama.cpp itself
logged for the same models (Gemma 3 270M Q4_K_M and the tiny test model, ctx 8192, 4 slots).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.gguf_info import GGUFInfo
from manager.engines.llamacpp_memory import (
    CHECKPOINTS_PER_SLOT, compute_bytes, footprint, kv_cell_bytes, kv_cells, swa_layers,
)

MiB = 1024**2


def header(arch: str, vocab: int, **keys: object) -> GGUFInfo:
    metadata: dict[str, object] = {"general.architecture": arch}
    metadata.update({f"{arch}.{k.replace('__', '.')}": v for k, v in keys.items()})
    return GGUFInfo(Path("m.gguf"), 0, 3, metadata, {"tokenizer.ggml.tokens": vocab})


def gemma3_270m() -> GGUFInfo:
    """The header fields of gemma-3-270m-q4_k_m.gguf."""
    return header("gemma3", 262144, context_length=32768, embedding_length=640, block_count=18,
                  feed_forward_length=2048, attention__head_count=4, attention__head_count_kv=1,
                  attention__key_length=256, attention__value_length=256, attention__sliding_window=512)


def tiny() -> GGUFInfo:
    return header("llama", 269, context_length=16384, embedding_length=64, block_count=2,
                  feed_forward_length=128, attention__head_count=4, attention__head_count_kv=2)


def chat(info: GGUFInfo, **over: object):  # type: ignore[no-untyped-def]
    args = dict(ctx=8192, parallel=4, ubatch=512, unified=True, cache_ram_mb=256, chat=True) | over
    return footprint(info, **args)  # type: ignore[arg-type]


def test_gemma3_kv_cache_is_what_llama_cpp_allocates() -> None:
    # llama.cpp: non-SWA 8192 cells x 3 layers = 24.00 MiB, SWA 2560 cells x 15 layers = 37.50 MiB.
    assert swa_layers(gemma3_270m(), 18) == 15
    assert kv_cells(8192, 4, 512, True, 512) == (8192, 2560)
    assert chat(gemma3_270m()).kv == 24 * MiB + int(37.5 * MiB)


def test_a_model_without_a_window_keeps_every_layer_at_full_context() -> None:
    # llama.cpp: 2.00 MiB (8192 cells, 2 layers).
    assert swa_layers(tiny(), 2) == 0
    assert chat(tiny()).kv == 2 * MiB


def test_gemma3_checkpoints_are_the_window_of_every_sliding_layer() -> None:
    # llama-server: "created context checkpoint ... size = 7.506 MiB", two per slot per long prompt.
    per_checkpoint = 15 * 512 * kv_cell_bytes(gemma3_270m())
    assert per_checkpoint == int(7.5 * MiB)
    assert chat(gemma3_270m()).checkpoints == 4 * CHECKPOINTS_PER_SLOT * per_checkpoint
    assert chat(tiny()).checkpoints == 0


@pytest.mark.parametrize(("info", "logged_mib"), [(gemma3_270m(), 28.78), (tiny(), 9.14)])
def test_compute_buffer_covers_what_llama_cpp_reserves_within_a_tenth(info: GGUFInfo, logged_mib: float) -> None:
    f = chat(info)
    assert logged_mib * MiB <= f.compute <= logged_mib * MiB * 1.1


def test_growth_after_ready_is_graph_checkpoints_and_the_prompt_cache() -> None:
    f = chat(gemma3_270m())
    assert f.growth == f.compute + f.sampler + f.checkpoints + f.prompt_cache + 4 * MiB
    assert 256 * MiB < f.prompt_cache <= 280 * MiB
    # Measured: ready 374 MiB; filled and with the prompt cache full, 714 MiB.
    weights = 253_113_024
    assert 714 * MiB <= weights + f.at_ready + f.growth <= 714 * MiB * 1.25


def test_embedding_slots_have_no_prompt_cache_checkpoints_or_sampler() -> None:
    f = footprint(gemma3_270m(), ctx=8192, parallel=4, ubatch=2048, unified=False, cache_ram_mb=256, chat=False)
    assert f.prompt_cache == f.checkpoints == f.sampler == 0
    # Per sequence 2048 cells; the window plus a 2048-token micro-batch covers all of them.
    assert kv_cells(8192, 4, 2048, False, 512) == (8192, 8192)


def test_sliding_window_patterns() -> None:
    gemma2 = header("gemma2", 10, block_count=26, attention__sliding_window=4096)
    assert swa_layers(gemma2, 26) == 13
    flags = header("newarch", 10, attention__sliding_window=128, attention__sliding_window_pattern=[1, 1, 0, 1])
    assert swa_layers(flags, 4) == 3
    every_nth = header("newarch", 10, attention__sliding_window=128, attention__sliding_window_pattern=4)
    assert swa_layers(every_nth, 8) == 6
    unknown = header("newarch", 10, attention__sliding_window=128)
    assert swa_layers(unknown, 8) == 8  # no pattern known: every layer windowed, as llama.cpp does


def test_odd_header_values_do_not_raise() -> None:
    odd = header("gemma3", 100, block_count="eighteen", attention__sliding_window=[512, 512],
                 feed_forward_length=None, attention__head_count=4, embedding_length=64)
    f = chat(odd)
    assert f.kv >= 0 and f.compute > 0


def test_non_unified_sliding_cache_is_sized_per_sequence() -> None:
    assert kv_cells(8192, 4, 512, False, 512) == (8192, 4 * 1024)
    assert compute_bytes(tiny(), 512, 8192, 4) > 8 * MiB
