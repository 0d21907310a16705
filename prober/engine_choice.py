"""Which inference engine serves a model on a machine, and why; and how llama.cpp must be built for it.

Pure functions of a HardwareSnapshot and a model's weight format (DESIGN.md, "Engines"); nothing here reads the
machine. `choose_for` is the one table of engine choices: the manager loads by it, and `GET /lf/engines` and
`lmforge doctor` show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from manager.protocol import HardwareSnapshot, SlotKind

MLX = "mlx"
SGLANG = "sglang"
LLAMA_CPP = "llama.cpp"
ENGINES = (LLAMA_CPP, MLX, SGLANG)
GiB = 1024**3

# What each engine reads and serves. SGLang serves chat and embeddings but not llama.cpp's reranking; mlx_lm.server
# serves chat only. GGUF embedding and rerank models therefore stay on llama.cpp on every host.
SERVES: dict[str, tuple[frozenset[str], frozenset[SlotKind]]] = {
    LLAMA_CPP: (frozenset({"gguf"}), frozenset(SlotKind)),
    MLX: (frozenset({"mlx", "safetensors"}), frozenset({SlotKind.CHAT})),
    SGLANG: (frozenset({"safetensors"}), frozenset({SlotKind.CHAT, SlotKind.EMBED})),
}
# SGLang holds its weights, KV cache and CUDA graphs in VRAM: below this it is not worth choosing over the rest.
SGLANG_MIN_VRAM = 8 * GiB


@dataclass(frozen=True)
class Choice:
    """The engine that serves a model, why, and the engines to try after it ("" when none can serve it)."""

    engine: str
    reason: str
    fallbacks: tuple[str, ...] = ()

    @property
    def candidates(self) -> tuple[str, ...]:
        return ((self.engine,) if self.engine else ()) + self.fallbacks

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
    """The host's default: "mlx" on Apple Silicon, "sglang" on Linux with an NVIDIA GPU of SGLANG_MIN_VRAM or more
    (the host where choose_for ranks SGLang first for safetensors), else "llama.cpp"."""
    if _apple_silicon(snapshot):
        return MLX
    if _sglang_host(snapshot):
        return SGLANG
    return LLAMA_CPP


def can_serve(engine: str, fmt: str, kind: SlotKind) -> bool:
    formats, kinds = SERVES.get(engine, (frozenset(), frozenset()))
    return fmt in formats and kind in kinds


def choose_for(fmt: str, kind: SlotKind, host: HardwareSnapshot | None, *, override: str = "",
               exclude: Iterable[str] = (), available: Iterable[str] = ENGINES) -> Choice:
    """The engine for a model of weight format `fmt` served as `kind` on `host` (None: not probed yet), with its
    reason; `override` is the model's engine from config, `exclude` the engines that already failed it, and
    `available` those this LMForge has adapters for."""
    skip = set(exclude) | (set(ENGINES) - set(available))
    if override:
        if not can_serve(override, fmt, kind):
            return Choice("", f"config sets engine {override!r} for it, which cannot serve {fmt} weights as {kind}")
        if override in skip:
            return Choice("", f"{override} (set in config) failed to install or load it")
        return Choice(override, f"set in config ([engines] names {override} for this model)")
    ranked = [(engine, why) for engine, why in _ranked(fmt, kind, host) if engine not in skip]
    if not ranked:
        tried = f"; tried {', '.join(sorted(set(exclude)))}" if exclude else ""
        return Choice("", _none_reason(fmt, kind) + tried)
    (engine, why), rest = ranked[0], tuple(e for e, _ in ranked[1:])
    if failed := sorted(set(exclude)):
        why += f" ({', '.join(failed)} failed)"
    return Choice(engine, why, rest)


def _ranked(fmt: str, kind: SlotKind, host: HardwareSnapshot | None) -> list[tuple[str, str]]:
    """Every engine that can serve it here, best first, each with why it is chosen."""
    apple = host is not None and _apple_silicon(host)
    ranked: list[tuple[str, str]] = []
    if fmt == "gguf" and can_serve(LLAMA_CPP, fmt, kind):
        ranked.append((LLAMA_CPP, "GGUF weights: llama.cpp serves them on every host"))
    if fmt == "safetensors" and can_serve(SGLANG, fmt, kind) and host is not None and _sglang_host(host):
        vram = max(gpu.vram_total for gpu in host.gpus if gpu.vendor == "nvidia")
        ranked.append((SGLANG, f"safetensors on Linux + NVIDIA with {vram / GiB:.0f} GiB of VRAM"))
    if fmt in ("mlx", "safetensors") and can_serve(MLX, fmt, kind) and (host is None or host.os != "windows"):
        where = "on Apple Silicon" if apple else "off Apple Silicon, on the CPU (mlx[cpu])"
        ranked.append((MLX, f"{fmt} weights: MLX reads them, {where}"))
    if fmt == "safetensors" and not apple and len(ranked) == 1 and ranked[0][0] == MLX:
        ranked[0] = (MLX, ranked[0][1] + "; SGLang needs Linux + NVIDIA with "
                     f"{SGLANG_MIN_VRAM / GiB:.0f} GiB of VRAM")
    return ranked


def _sglang_host(host: HardwareSnapshot) -> bool:
    return host.os == "linux" and any(g.vendor == "nvidia" and g.vram_total >= SGLANG_MIN_VRAM for g in host.gpus)


def _none_reason(fmt: str, kind: SlotKind) -> str:
    readers = [engine for engine in ENGINES if fmt in SERVES[engine][0]]
    if not readers:
        return f"no engine reads {fmt} weights"
    if len(readers) == 1:
        return f"{fmt} weights are read by {readers[0]} only, which cannot serve {kind} here"
    return f"{fmt} weights are read by {' and '.join(readers)}, and neither can serve {kind} here"


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
