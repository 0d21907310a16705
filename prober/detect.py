"""The hardware snapshot: `take_snapshot()` reads everything, `refresh_live()` only what moves.

Static facts (OS, arch, CPU, CPU plan, RAM total, GPU list) come from one full take; the
live figures (ram_available, each GPU's vram_free) are cheap to re-read every few seconds.
"""

from __future__ import annotations

import logging
import platform
import time

import msgspec

from manager.protocol import HardwareSnapshot
from prober.probes import apple, cpu, memory, nvidia
from prober.probes.cpu_plan import read_cpu_plan

log = logging.getLogger("lmforge.prober")

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64"}


def normalise_arch(machine: str) -> str:
    """x86_64 for every spelling of it; aarch64 / arm64 kept as the OS reports them."""
    arch = machine.strip().lower()
    return _ARCH_ALIASES.get(arch, arch)


def take_snapshot() -> HardwareSnapshot:
    """Read every hardware fact of this machine; may block (NVML, sysctl): run it in a thread."""
    os_name = platform.system().lower()
    arch = normalise_arch(platform.machine())
    apple_silicon = os_name == "darwin" and (arch == "arm64" or apple.arm64_hardware())
    if apple_silicon and arch != "arm64":
        # A translated (Rosetta) Python sees x86_64; the engine choice must see
        # the hardware, and MLX then needs a native arm64 Python.
        log.warning("this Python runs under Rosetta on an arm64 Mac; use a native arm64 Python")
        arch = "arm64"
    facts = cpu.read_cpu(os_name, arm64_mac=apple_silicon)
    ram_total, ram_available = memory.read_memory()
    return HardwareSnapshot(
        os=os_name,
        arch=arch,
        cpu_model=facts.model,
        cpu_cores=facts.cores,
        cpu_threads=facts.threads,
        ram_total=ram_total,
        ram_available=ram_available,
        gpus=nvidia.nvidia_gpus(),
        apple_chip=facts.model if apple_silicon else None,
        unified_memory=apple_silicon,
        cpu_flags=facts.flags,
        taken_at=time.time(),
        cpu_plan=read_cpu_plan(),
    )


def refresh_live(snapshot: HardwareSnapshot) -> HardwareSnapshot:
    """`snapshot` with ram_available and each GPU's vram_free read again, and a new taken_at."""
    _, ram_available = memory.read_memory()
    return msgspec.structs.replace(
        snapshot,
        ram_available=min(ram_available, snapshot.ram_total),
        gpus=nvidia.refresh_vram(snapshot.gpus),
        taken_at=time.time(),
    )
