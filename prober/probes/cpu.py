"""The CPU: model name, physical cores, usable threads and the ISA flags that engine builds need.

`parse_cpuinfo` and `keep_flags` are pure (text in, values out); `read_cpu` reads the machine.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import psutil

from prober.probes import apple

# x86 flags that decide which llama.cpp ISA options are safe to build with
# (prober/engine_choice.py). AMX is kept so it can be reported, never built.
X86_FLAGS = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2",
    "avx512f", "avx512cd", "avx512dq", "avx512bw", "avx512vl", "avx512vbmi",
    "avx512_vnni", "avx512_bf16", "avx_vnni",
    "amx_tile", "amx_int8", "amx_bf16",
})  # fmt: skip

# Linux ARM `Features` names -> one vocabulary shared with macOS (probes/apple.py):
# asimd is NEON on aarch64, asimddp the dot product, asimdhp half-precision SIMD.
ARM_FLAGS = {
    "neon": "neon",
    "asimd": "neon",
    "asimdhp": "fp16",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    "sme": "sme",
    "sme2": "sme2",
}

# ARM kernels print no model name, only implementer and part numbers (as lscpu
# decodes them); the common server and board cores get a readable name.
_ARM_VENDORS = {
    "0x41": "ARM", "0x42": "Broadcom", "0x43": "Cavium", "0x48": "HiSilicon",
    "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x61": "Apple", "0xc0": "Ampere",
}  # fmt: skip
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2",
}  # fmt: skip


@dataclass(frozen=True)
class CpuInfoText:
    """What /proc/cpuinfo says: the model and the kept ISA flags."""

    model: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class CpuFacts:
    """The CPU as a snapshot reports it."""

    model: str
    cores: int
    threads: int
    flags: tuple[str, ...]


def parse_cpuinfo(text: str) -> CpuInfoText:
    """Model name and kept flags from /proc/cpuinfo text, x86 or ARM."""
    first: dict[str, str] = {}
    flag_sets: list[set[str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        first.setdefault(key, value)
        if key in ("flags", "Features"):
            flag_sets.append(set(value.split()))
    # Every CPU must have a flag before a build may use it: intersect, in case
    # a heterogeneous system lists different sets per core.
    common = set.intersection(*flag_sets) if flag_sets else set()
    return CpuInfoText(model=_model_name(first), flags=keep_flags(common))


def _model_name(fields: dict[str, str]) -> str:
    if "CPU part" not in fields:
        return fields.get("model name", "")
    vendor = _ARM_VENDORS.get(fields.get("CPU implementer", "").lower(), "")
    part = fields["CPU part"].lower()
    if vendor == "ARM" and part in _ARM_PARTS:
        return f"ARM {_ARM_PARTS[part]}"
    # Boards name their SoC under Hardware (e.g. BCM2835); better than a bare number.
    if fields.get("Hardware"):
        return fields["Hardware"]
    return fields.get("model name") or f"{vendor or 'ARM'} CPU part {part}".strip()


def keep_flags(flags: set[str] | frozenset[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The flags that matter to engine builds, ARM names normalised, sorted."""
    kept = {flag for flag in flags if flag in X86_FLAGS}
    kept |= {ARM_FLAGS[flag] for flag in flags if flag in ARM_FLAGS}
    return tuple(sorted(kept))


def read_cpu(os_name: str, arm64_mac: bool) -> CpuFacts:
    """Read this machine's CPU facts; `arm64_mac` is Apple Silicon (even under Rosetta)."""
    model, flags = "", ()
    if os_name == "linux":
        info = _read_proc_cpuinfo()
        model, flags = info.model, info.flags
    elif os_name == "darwin":
        model = apple.chip_name() or ""
        flags = keep_flags(apple.cpu_flags(arm64_mac))
    elif os_name == "windows":
        model = _windows_cpu_name()
    threads, cores = _counts()
    return CpuFacts(model=model or platform.processor(), cores=cores, threads=threads, flags=flags)


def _read_proc_cpuinfo() -> CpuInfoText:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return CpuInfoText(model="", flags=())


def _counts() -> tuple[int, int]:
    threads = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    cores = psutil.cpu_count(logical=False) or threads
    # A container pinned to a few CPUs of a large host must not be told it can
    # run a thread on every host CPU (the cgroup memory limit gets the same care).
    if hasattr(os, "sched_getaffinity"):
        usable = len(os.sched_getaffinity(0))
        if 0 < usable < threads:
            threads, cores = usable, min(cores, usable)
    return threads, cores


def _windows_cpu_name() -> str:
    # platform.processor() on Windows is 'Intel64 Family 6 Model 85 ...'; the
    # registry holds the marketing name that users recognise.
    try:
        import winreg

        key = winreg.OpenKey(
            winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0"
        )
        with key:
            return str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip()
    except (ImportError, OSError):
        return ""
