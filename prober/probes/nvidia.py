"""NVIDIA GPUs through NVML (pynvml): every device's name, VRAM, driver and compute capability.

No driver, no libnvidia-ml, or no pynvml all mean the same thing here: no NVIDIA GPUs.
"""

from __future__ import annotations

import logging
from types import ModuleType

import msgspec

from manager.protocol import GpuInfo

log = logging.getLogger("lmforge.prober")


def _nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _text(value: str | bytes) -> str:
    # pynvml releases before 11.5 return bytes for strings.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _init(nvml: ModuleType) -> bool:
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ... subclass it
        log.debug("no NVIDIA GPUs: %s", exc)
        return False
    return True


def _shutdown(nvml: ModuleType) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError as exc:
        log.debug("nvmlShutdown: %s", exc)


def nvidia_gpus() -> tuple[GpuInfo, ...]:
    """Every GPU NVML enumerates (all of them, not CUDA_VISIBLE_DEVICES); () when none."""
    nvml = _nvml()
    if nvml is None or not _init(nvml):
        return ()
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        count = nvml.nvmlDeviceGetCount()
        gpus = (_gpu(nvml, index, driver) for index in range(count))
        return tuple(gpu for gpu in gpus if gpu is not None)
    except nvml.NVMLError as exc:
        log.warning("NVML could not list the GPUs: %s", exc)
        return ()
    finally:
        _shutdown(nvml)


def _gpu(nvml: ModuleType, index: int, driver: str) -> GpuInfo | None:
    # One lost or broken GPU must not hide the healthy ones.
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        name = _text(nvml.nvmlDeviceGetName(handle))
    except nvml.NVMLError as exc:
        log.warning("skipping GPU %d: %s", index, exc)
        return None
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        capability: str | None = f"{major}.{minor}"
    except nvml.NVMLError:
        capability = None
    return GpuInfo(
        index=index,
        vendor="nvidia",
        name=name,
        vram_total=int(memory.total),
        vram_free=int(memory.free),
        driver=driver,
        compute_capability=capability,
    )


def refresh_vram(gpus: tuple[GpuInfo, ...]) -> tuple[GpuInfo, ...]:
    """The same GPUs with vram_free read again; a GPU that cannot be read keeps its last figure."""
    nvidia = [gpu for gpu in gpus if gpu.vendor == "nvidia"]
    nvml = _nvml()
    if not nvidia or nvml is None or not _init(nvml):
        return gpus
    try:
        return tuple(_refreshed(nvml, gpu) if gpu.vendor == "nvidia" else gpu for gpu in gpus)
    finally:
        _shutdown(nvml)


def _refreshed(nvml: ModuleType, gpu: GpuInfo) -> GpuInfo:
    try:
        memory = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(gpu.index))
    except nvml.NVMLError as exc:
        log.debug("GPU %d: %s", gpu.index, exc)
        return gpu
    return msgspec.structs.replace(gpu, vram_free=int(memory.free))


class NvmlSession:
    """Keeps NVML initialised for a long-lived prober.

    NVML counts nvmlInit calls, so while a session is open the init/shutdown pair
    around each probe is only bookkeeping; without one, every refresh would load
    the library and set the devices up again.
    """

    def __init__(self) -> None:
        self._nvml: ModuleType | None = None

    def open(self) -> None:
        nvml = _nvml()
        if self._nvml is None and nvml is not None and _init(nvml):
            self._nvml = nvml

    def close(self) -> None:
        if self._nvml is not None:
            _shutdown(self._nvml)
            self._nvml = None


def gpu_memory_by_pid() -> dict[int, int]:
    """GPU memory each process holds, summed over every NVIDIA GPU; {} without NVML.

    The manager's measure of an engine's real footprint on a GPU host (its RSS
    does not include VRAM).
    """
    nvml = _nvml()
    if nvml is None or not _init(nvml):
        return {}
    try:
        entries = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            entries += [(p.pid, p.usedGpuMemory) for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        return sum_by_pid(entries)
    except nvml.NVMLError as exc:
        log.debug("NVML could not list GPU processes: %s", exc)
        return {}
    finally:
        _shutdown(nvml)


def sum_by_pid(entries: list[tuple[int, int | None]]) -> dict[int, int]:
    """One total per pid; NVML reports None for memory it may not disclose (e.g. in containers)."""
    totals: dict[int, int] = {}
    for pid, used in entries:
        if used:
            totals[pid] = totals.get(pid, 0) + int(used)
    return totals
