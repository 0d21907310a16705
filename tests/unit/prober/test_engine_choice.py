"""Engine choice matrix, llama.cpp backend, and the ISA CMake flags (AMX never on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.protocol import GpuInfo, HardwareSnapshot
from prober.engine_choice import choose_engine, cpu_isa_cmake_flags, llama_cpp_backend
from prober.probes.cpu import parse_cpuinfo

DATA = Path(__file__).parent / "data"
GiB = 1 << 30
NVIDIA = GpuInfo(
    index=0, vendor="nvidia", name="NVIDIA H100", vram_total=80 * GiB, vram_free=79 * GiB
)


def _snapshot(os: str, arch: str, gpus: tuple[GpuInfo, ...] = ()) -> HardwareSnapshot:
    return HardwareSnapshot(
        os=os, arch=arch, cpu_model="test", cpu_cores=2, cpu_threads=4,
        ram_total=16 * GiB, ram_available=8 * GiB, gpus=gpus,
        unified_memory=os == "darwin" and arch == "arm64",
    )  # fmt: skip


def _flags(name: str) -> tuple[str, ...]:
    return parse_cpuinfo((DATA / name).read_text()).flags


@pytest.mark.parametrize(
    ("os", "arch", "gpus", "engine"),
    [
        ("darwin", "arm64", (), "mlx"),
        ("darwin", "x86_64", (), "llama.cpp"),
        ("linux", "x86_64", (NVIDIA,), "sglang"),
        ("linux", "aarch64", (NVIDIA,), "sglang"),
        ("linux", "x86_64", (), "llama.cpp"),
        ("linux", "aarch64", (), "llama.cpp"),
        ("windows", "x86_64", (NVIDIA,), "llama.cpp"),
        ("windows", "x86_64", (), "llama.cpp"),
    ],
)
def test_engine_choice_matrix(os, arch, gpus, engine):
    assert choose_engine(_snapshot(os, arch, gpus)) == engine


@pytest.mark.parametrize(
    ("os", "arch", "gpus", "nvcc", "backend"),
    [
        ("linux", "x86_64", (NVIDIA,), True, "cuda"),
        ("linux", "x86_64", (NVIDIA,), False, "cpu"),
        ("windows", "x86_64", (NVIDIA,), True, "cuda"),
        ("darwin", "arm64", (), False, "metal"),
        ("darwin", "x86_64", (), False, "cpu"),
        ("linux", "x86_64", (), True, "cpu"),
        ("linux", "aarch64", (), False, "cpu"),
    ],
)
def test_llama_cpp_backend(os, arch, gpus, nvcc, backend):
    assert llama_cpp_backend(_snapshot(os, arch, gpus), nvcc_available=nvcc) == backend


def _enabled(args: list[str]) -> set[str]:
    return {arg[len("-DGGML_") : -len("=ON")] for arg in args if arg.endswith("=ON")}


def test_amx_cpu_builds_every_isa_it_has_but_never_amx():
    args = cpu_isa_cmake_flags(_flags("cpuinfo_x86_sapphire_rapids.txt"))
    assert args[0] == "-DGGML_NATIVE=OFF"
    assert _enabled(args) == {
        "SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2", "AVX512", "AVX512_VBMI",
        "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI",
    }  # fmt: skip
    for amx in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{amx}=OFF" in args


def test_amx_is_never_switched_on_even_from_raw_flags():
    args = cpu_isa_cmake_flags(["sse4_2", "avx", "amx_tile", "amx_int8", "amx_bf16"])
    assert not [arg for arg in args if "AMX" in arg and arg.endswith("=ON")]


def test_cpu_without_avx_spells_every_missing_isa_off():
    # ggml turns AVX/AVX2/FMA/F16C/BMI2 on by default once GGML_NATIVE=OFF.
    args = cpu_isa_cmake_flags(_flags("cpuinfo_x86_nehalem.txt"))
    assert _enabled(args) == {"SSE42"}
    for option in ("AVX", "AVX2", "FMA", "F16C", "BMI2", "AVX512"):
        assert f"-DGGML_{option}=OFF" in args


def test_avx512_needs_the_whole_set_that_ggml_compiles_with():
    knights_landing = ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd"]
    args = cpu_isa_cmake_flags(knights_landing)
    assert "-DGGML_AVX512=OFF" in args
    assert _enabled(args) == {"SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2"}


def test_every_option_appears_exactly_once():
    args = cpu_isa_cmake_flags(_flags("cpuinfo_x86_sapphire_rapids.txt"))
    names = [arg.split("=")[0] for arg in args]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "name", ["cpuinfo_aarch64_graviton3.txt", "cpuinfo_aarch64_raspberry_pi4.txt"]
)
def test_arm_keeps_the_native_build(name):
    assert cpu_isa_cmake_flags(_flags(name)) == []


def test_unknown_flags_keep_the_native_build():
    assert cpu_isa_cmake_flags(()) == []
