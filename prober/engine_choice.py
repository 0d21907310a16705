"""Which inference engine fits a machine, and how llama.cpp must be built for it.

Pure functions of a HardwareSnapshot (DESIGN.md, "Engines"); nothing here reads the machine.
"""

from __future__ import annotations

from typing import Iterable

from manager.protocol import HardwareSnapshot

MLX = "mlx"
SGLANG = "sglang"
LLAMA_CPP = "llama.cpp"

# (ggml CMake option, the cpuinfo flags a CPU must have for it). GGML_AVX512
# compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw, so all
# five are needed (Xeon Phi has avx512f without bw/vl/dq).
_GGML_ISA: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SSE42", ("sse4_2",)),
    ("AVX", ("avx",)),
    ("AVX2", ("avx2",)),
    ("FMA", ("fma",)),
    ("F16C", ("f16c",)),
    ("BMI2", ("bmi2",)),
    ("AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("AVX512_VBMI", ("avx512f", "avx512vbmi")),
    ("AVX512_VNNI", ("avx512f", "avx512_vnni")),
    ("AVX512_BF16", ("avx512f", "avx512_bf16")),
    ("AVX_VNNI", ("avx_vnni",)),
)

# Some virtual machines (this project's CI among them) advertise AMX while the
# kernel traps it: a build with AMX dies of SIGILL as soon as it loads a
# quantized model. Same speed without it, so it is never switched on.
_NEVER = ("AMX_TILE", "AMX_INT8", "AMX_BF16")

_X86_MARKERS = frozenset(flag for _, needs in _GGML_ISA for flag in needs)


def _apple_silicon(snapshot: HardwareSnapshot) -> bool:
    return snapshot.os == "darwin" and snapshot.arch in ("arm64", "aarch64")


def _has_nvidia(snapshot: HardwareSnapshot) -> bool:
    return any(gpu.vendor == "nvidia" for gpu in snapshot.gpus)


def choose_engine(snapshot: HardwareSnapshot) -> str:
    """"mlx" on Apple Silicon, "sglang" on Linux with an NVIDIA GPU, else "llama.cpp"."""
    if _apple_silicon(snapshot):
        return MLX
    if snapshot.os == "linux" and _has_nvidia(snapshot):
        return SGLANG
    return LLAMA_CPP


def llama_cpp_backend(snapshot: HardwareSnapshot, nvcc_available: bool) -> str:
    """"cuda" (NVIDIA GPU and nvcc to build with), "metal" (Apple Silicon), else "cpu"."""
    if _has_nvidia(snapshot) and nvcc_available:
        return "cuda"
    if _apple_silicon(snapshot):
        return "metal"
    return "cpu"


def cpu_isa_cmake_flags(cpu_flags: Iterable[str]) -> list[str]:
    """ggml CMake arguments for exactly the x86 instruction sets the CPU reports, AMX off.

    Every option is spelled out, ON or OFF: with GGML_NATIVE=OFF ggml turns
    SSE42/AVX/AVX2/BMI2/FMA/F16C on by default (and off when SOURCE_DATE_EPOCH is
    set), so leaving one out would build in what the CPU may lack.

    Without x86 flags (ARM, or a system whose flags are unknown) this returns []:
    the native build is right there, since NATIVE=OFF on ARM drops to plain
    armv8-a and loses dotprod/fp16/i8mm, and ARM has no AMX to trip over.
    """
    flags = set(cpu_flags)
    if not flags & _X86_MARKERS:
        return []
    args = ["-DGGML_NATIVE=OFF"]
    for option, needs in _GGML_ISA:
        enabled = all(flag in flags for flag in needs)
        args.append(f"-DGGML_{option}={'ON' if enabled else 'OFF'}")
    args += [f"-DGGML_{option}=OFF" for option in _NEVER]
    return args
