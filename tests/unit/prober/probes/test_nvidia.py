"""NVIDIA probe against this machine's real NVML: GPUs when there are some, () when not."""

from __future__ import annotations

import pytest

from prober.probes.nvidia import NvmlSession, nvidia_gpus, refresh_vram


def test_gpus_on_this_machine_are_sane_or_absent():
    gpus = nvidia_gpus()
    assert [gpu.index for gpu in gpus] == list(range(len(gpus)))
    for gpu in gpus:
        assert gpu.vendor == "nvidia" and gpu.name
        assert 0 <= gpu.vram_free <= gpu.vram_total
        assert gpu.driver
        assert gpu.compute_capability is None or "." in gpu.compute_capability


def test_refresh_keeps_every_static_fact():
    gpus = nvidia_gpus()
    if not gpus:
        pytest.skip("no NVIDIA GPU on this machine")
    for before, after in zip(gpus, refresh_vram(gpus), strict=True):
        assert before.index == after.index
        assert (before.name, before.vram_total) == (after.name, after.vram_total)


def test_refresh_of_no_gpus_is_no_gpus():
    assert refresh_vram(()) == ()


def test_session_open_and_close_are_safe_with_or_without_a_driver():
    session = NvmlSession()
    session.open()
    session.open()
    assert isinstance(nvidia_gpus(), tuple)
    session.close()
    session.close()


def test_gpu_memory_is_summed_per_process_across_gpus() -> None:
    from prober.probes.nvidia import sum_by_pid

    assert sum_by_pid([(10, 100), (11, 5), (10, 50), (12, None), (13, 0)]) == {10: 150, 11: 5}
