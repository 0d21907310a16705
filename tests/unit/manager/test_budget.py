"""The memory budget comes from config, else the prober's snapshot, by kind of host."""

from __future__ import annotations

from manager.budget import budget_total
from manager.config import Settings
from manager.protocol import GpuInfo, HardwareSnapshot

GiB = 1024**3


def hw(**kw: object) -> HardwareSnapshot:
    base = dict(os="linux", arch="x86_64", cpu_model="cpu", cpu_cores=4, cpu_threads=8,
                ram_total=32 * GiB, ram_available=20 * GiB)
    base.update(kw)
    return HardwareSnapshot(**base)  # type: ignore[arg-type]


def gpu(i: int, free: int) -> GpuInfo:
    return GpuInfo(index=i, vendor="nvidia", name="H100", vram_total=80 * GiB, vram_free=free)


def test_configured_budget_wins_over_hardware() -> None:
    assert budget_total(Settings(memory_budget_mb=512), hw(), 0) == (512 * 1024**2, "config")


def test_unknown_until_the_prober_reports() -> None:
    assert budget_total(Settings(), None, 0) == (0, "unknown")


def test_cpu_host_uses_available_ram_less_the_reserve() -> None:
    total, source = budget_total(Settings(memory_fraction=1.0, ram_reserve_mb=1024), hw(), 0)
    assert (total, source) == (19 * GiB, "ram")


def test_our_own_engines_are_added_back_to_the_free_figure() -> None:
    s = Settings(memory_fraction=1.0, ram_reserve_mb=0)
    assert budget_total(s, hw(ram_available=10 * GiB), 6 * GiB)[0] == 16 * GiB


def test_gpu_host_sums_free_vram_of_every_gpu() -> None:
    total, source = budget_total(Settings(memory_fraction=0.5), hw(gpus=(gpu(0, 40 * GiB), gpu(1, 20 * GiB))), 0)
    assert (total, source) == (30 * GiB, "vram")


def test_apple_silicon_uses_unified_memory() -> None:
    total, source = budget_total(Settings(memory_fraction=0.5), hw(unified_memory=True), 0)
    assert (total, source) == (10 * GiB, "unified")


def test_reserve_larger_than_free_ram_gives_zero_not_negative() -> None:
    assert budget_total(Settings(ram_reserve_mb=64 * 1024), hw(), 0)[0] == 0
