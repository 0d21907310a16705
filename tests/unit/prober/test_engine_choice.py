"""Engine choice matrix, llama.cpp backend, and the ISA CMake flags (AMX never on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.protocol import GpuInfo, HardwareSnapshot, SlotKind
from prober.engine_choice import Choice, choose_engine, choose_for, cpu_isa_cmake_flags, llama_cpp_backend
from prober.probes.cpu import parse_cpuinfo

DATA = Path(__file__).parent / "data"
GiB = 1 << 30
NVIDIA = GpuInfo(
    index=0, vendor="nvidia", name="NVIDIA H100", vram_total=80 * GiB, vram_free=79 * GiB
)
# Under SGLANG_MIN_VRAM: no model picks SGLang on it, so neither does the host's default.
SMALL_NVIDIA = GpuInfo(
    index=0, vendor="nvidia", name="NVIDIA GeForce GTX 1650", vram_total=4 * GiB, vram_free=4 * GiB
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
        ("linux", "x86_64", (SMALL_NVIDIA,), "llama.cpp"),
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


# --- the choice per model: choose_for ---

LINUX_CPU = _snapshot("linux", "x86_64")
LINUX_NVIDIA = _snapshot("linux", "x86_64", (NVIDIA,))
APPLE = _snapshot("darwin", "arm64")
SMALL_GPU = _snapshot("linux", "x86_64", (GpuInfo(index=0, vendor="nvidia", name="T400", vram_total=2 * GiB,
                                                  vram_free=2 * GiB),))


@pytest.mark.parametrize(
    ("fmt", "kind", "host", "engine", "fallbacks"),
    [
        ("gguf", SlotKind.CHAT, LINUX_NVIDIA, "llama.cpp", ()),  # GGUF stays on llama.cpp, even on an SGLang host
        ("gguf", SlotKind.EMBED, LINUX_NVIDIA, "llama.cpp", ()),
        ("gguf", SlotKind.RERANK, LINUX_NVIDIA, "llama.cpp", ()),
        ("gguf", SlotKind.CHAT, APPLE, "llama.cpp", ()),
        ("mlx", SlotKind.CHAT, APPLE, "mlx", ()),
        ("mlx", SlotKind.CHAT, LINUX_CPU, "mlx", ()),  # mlx[cpu]
        ("safetensors", SlotKind.CHAT, LINUX_NVIDIA, "sglang", ("mlx",)),
        ("safetensors", SlotKind.EMBED, LINUX_NVIDIA, "sglang", ()),
        ("safetensors", SlotKind.CHAT, SMALL_GPU, "mlx", ()),  # too little VRAM for SGLang
        ("safetensors", SlotKind.CHAT, APPLE, "mlx", ()),
        ("mlx", SlotKind.EMBED, APPLE, "", ()),
        ("safetensors", SlotKind.RERANK, LINUX_NVIDIA, "", ()),
        ("mlx", SlotKind.CHAT, _snapshot("windows", "x86_64"), "", ()),
    ],
)
def test_each_format_and_kind_gets_its_engine(fmt, kind, host, engine, fallbacks):
    choice = choose_for(fmt, kind, host)
    assert (choice.engine, choice.fallbacks) == (engine, fallbacks)
    assert choice.reason  # every choice, and every refusal, says why


@pytest.mark.parametrize("host", [LINUX_CPU, LINUX_NVIDIA, APPLE, SMALL_GPU,
                                  _snapshot("windows", "x86_64", (NVIDIA,))])
def test_the_host_default_is_sglang_exactly_where_a_safetensors_chat_model_gets_it(host):
    assert (choose_engine(host) == "sglang") is (choose_for("safetensors", SlotKind.CHAT, host).engine == "sglang")


def test_reasons_name_what_decided():
    assert "80 GiB" in choose_for("safetensors", SlotKind.CHAT, LINUX_NVIDIA).reason
    assert "SGLang needs Linux + NVIDIA" in choose_for("safetensors", SlotKind.CHAT, SMALL_GPU).reason
    assert choose_for("mlx", SlotKind.EMBED, APPLE).reason == "mlx weights are read by mlx only, which cannot serve embed here"


def test_an_override_from_config_wins_when_that_engine_can_serve_the_model():
    assert choose_for("safetensors", SlotKind.CHAT, LINUX_NVIDIA, override="mlx") == \
        Choice("mlx", "set in config ([engines] names mlx for this model)")
    refused = choose_for("gguf", SlotKind.CHAT, LINUX_CPU, override="mlx")
    assert refused.engine == "" and "cannot serve gguf weights as chat" in refused.reason


def test_a_failed_engine_hands_over_to_the_next_and_the_reason_says_so():
    choice = choose_for("safetensors", SlotKind.CHAT, LINUX_NVIDIA, exclude=("sglang",))
    assert choice.engine == "mlx" and choice.reason.endswith("(sglang failed)")
    none_left = choose_for("safetensors", SlotKind.CHAT, LINUX_NVIDIA, exclude=("sglang", "mlx"))
    assert none_left.engine == "" and none_left.reason.endswith("tried mlx, sglang")


def test_engines_without_an_adapter_here_are_not_chosen():
    choice = choose_for("safetensors", SlotKind.CHAT, LINUX_NVIDIA, available=("llama.cpp", "mlx"))
    assert choice.engine == "mlx" and "failed" not in choice.reason
