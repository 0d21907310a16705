"""NVIDIA GPUs through NVML (pynvml): every device's name, VRAM, driver and compute capability,
and the VRAM each process holds, read through one long-lived NvmlSession (prober/probes/nvidia_container.py
works out our engines' share where NVML cannot say it per process).

No driver, no libnvidia-ml, or no pynvml all mean the same thing here: no NVIDIA GPUs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import msgspec

from manager.protocol import GpuInfo

log = logging.getLogger("lmforge.prober")

# NVML_VALUE_NOT_AVAILABLE for unsigned long long figures: all bits set.
NVML_VALUE_NOT_AVAILABLE = 2**64 - 1
# Errors after which NVML or its device handles are unusable: uninitialised,
# driver not loaded, GPU lost, reset required, driver/library mismatch, GPU not
# found, unknown. Others (not supported, no permission) leave the session as it is.
_SESSION_ENDING = {1, 9, 15, 16, 18, 28, 999}
_PYNVML = object()  # NvmlSession's default source: the real pynvml, imported on first use


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


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one reading: its memory, and the compute processes NVML lists on it."""

    index: int
    total: int
    used: int  # total less free: what every process holds, ours included, and what the driver keeps
    # (pid, bytes) as NVML lists them; bytes None where NVML withholds the figure. None: NVML would not list
    # this GPU's processes at all (not supported, no permission).
    processes: tuple[tuple[int, int | None], ...] | None


class NvmlSession:
    """One NVML session for a long-lived process, and the per-process VRAM reading.

    NVML is initialised on first use and kept; it is shut down and initialised
    again only after an error that leaves it unusable (a GPU lost, a driver
    reloaded). `nvml` is pynvml by default; tests pass an object with the same
    functions that replays recorded readings. Thread-safe: the manager reads
    from a worker thread while the loop may close it.
    """

    def __init__(self, nvml: Any = _PYNVML, *, retry_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._source = nvml
        self._retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._nvml: Any = None  # set while initialised
        self._handles: list[object] = []
        self._failed_at: float | None = None  # last failed init, so a host without a driver is not retried every second
        self.inits = 0  # successful nvmlInit calls, for tests and logs

    def open(self) -> bool:
        """Initialise NVML unless it already is; False when there is no usable NVML."""
        with self._lock:
            return self._open()

    def close(self) -> None:
        """Shut NVML down; idempotent. A later reading opens it again."""
        with self._lock:
            self._close()

    def gpu_memory_by_pid(self) -> dict[int, int]:
        """GPU memory each process holds now, summed over every NVIDIA GPU; {} when unknown.

        The manager's measure of an engine's real footprint on a GPU host (its RSS
        does not include VRAM). A pid whose figure NVML withholds on any GPU is left
        out (unknown), never counted as zero.
        """
        with self._lock:
            if not self._open():
                return {}
            nvml = self._nvml
            try:
                entries = [
                    (p.pid, _used(p.usedGpuMemory))
                    for handle in self._handles
                    for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                ]
            except nvml.NVMLError as exc:
                self._on_error(exc)
                return {}
        return sum_by_pid(entries)

    def gpu_samples(self) -> tuple[GpuSample, ...] | None:
        """Every GPU's memory and process list, read together; None when NVML cannot be read now.

        Unlike gpu_memory_by_pid, a GPU whose process list NVML refuses still counts:
        its memory figures are what a reading without per-process figures goes by.
        """
        with self._lock:
            if not self._open():
                return None
            nvml = self._nvml
            try:
                return tuple(self._sample(nvml, index, handle) for index, handle in enumerate(self._handles))
            except nvml.NVMLError as exc:
                self._on_error(exc)
                return None

    @staticmethod
    def _sample(nvml: Any, index: int, handle: object) -> GpuSample:
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        total, used = int(memory.total), int(memory.total) - int(memory.free)
        try:
            listed = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except nvml.NVMLError as exc:
            if getattr(exc, "value", None) in _SESSION_ENDING:
                raise
            log.debug("NVML will not list GPU %d's processes: %s", index, exc)
            return GpuSample(index, total, used, None)
        return GpuSample(index, total, used, tuple((int(p.pid), _used(p.usedGpuMemory)) for p in listed))

    def _open(self) -> bool:
        if self._nvml is not None:
            return True
        if self._failed_at is not None and self._clock() - self._failed_at < self._retry_s:
            return False
        nvml = _nvml() if self._source is _PYNVML else self._source
        if nvml is None or not _init(nvml):
            self._failed_at = self._clock()
            return False
        try:
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            log.warning("NVML could not list the GPUs: %s", exc)
            _shutdown(nvml)
            self._failed_at = self._clock()
            return False
        self._nvml, self._failed_at = nvml, None
        self.inits += 1
        return True

    def _close(self) -> None:
        if self._nvml is not None:
            _shutdown(self._nvml)
        self._nvml, self._handles = None, []

    def _on_error(self, exc: Exception) -> None:
        if getattr(exc, "value", None) not in _SESSION_ENDING:
            log.debug("NVML could not list GPU processes: %s", exc)
            return
        # Device handles do not survive a lost GPU or a driver reload; the next
        # reading starts a fresh session (at once, not after retry_s: NVML was
        # working a moment ago).
        log.warning("NVML could not list GPU processes (%s); re-initialising it", exc)
        self._close()


def _used(value: int | None) -> int | None:
    # pynvml turns NVML_VALUE_NOT_AVAILABLE into None (WDDM, some containers,
    # MIG); older bindings pass the raw all-ones value through.
    return None if value is None or value >= NVML_VALUE_NOT_AVAILABLE else int(value)


_session: NvmlSession | None = None
_session_lock = threading.Lock()


def session() -> NvmlSession:
    """The process-wide session: one NVML initialisation however many readers there are."""
    global _session
    with _session_lock:
        if _session is None:
            _session = NvmlSession()
        return _session


def gpu_memory_by_pid() -> dict[int, int]:
    """The process-wide session's reading; see NvmlSession.gpu_memory_by_pid."""
    return session().gpu_memory_by_pid()


def sum_by_pid(entries: list[tuple[int, int | None]]) -> dict[int, int]:
    """One total per pid over every GPU.

    NVML reports None for memory it may not disclose; a pid with such an entry is
    left out, since a partial sum would undercount it. Zero is no figure either.
    """
    totals: dict[int, int] = {}
    unknown: set[int] = set()
    for pid, used in entries:
        if used is None:
            unknown.add(pid)
        elif used:
            totals[pid] = totals.get(pid, 0) + int(used)
    return {pid: total for pid, total in totals.items() if pid not in unknown}
