"""NVIDIA probe: this machine's real NVML (GPUs when there are some, () when not), and
the per-process VRAM session fed with recorded NVML readings.
"""

from __future__ import annotations

from types import SimpleNamespace

import pynvml
import pytest

from prober.probes.nvidia import NVML_VALUE_NOT_AVAILABLE, NvmlSession, nvidia_gpus, refresh_vram, sum_by_pid

MiB = 1024**2


class RecordedNvml:
    """Replays NVML readings through pynvml's own function names, errors and values.

    `readings` holds one entry per gpu_memory_by_pid() call: for each GPU, what
    nvmlDeviceGetComputeRunningProcesses returned (pid and usedGpuMemory), or an
    NVML error code that the call raises.
    """

    NVMLError = pynvml.NVMLError

    def __init__(self, readings: list[list[list[tuple[int, int | None]] | int]], *, init_error: int = 0) -> None:
        self.readings = list(readings)
        self.init_error = init_error
        self.inits = self.shutdowns = 0
        self.open = 0  # NVML counts inits; 0 means shut down
        self.current: list[list[tuple[int, int | None]] | int] = []

    def nvmlInit(self) -> None:
        if self.init_error:
            raise pynvml.NVMLError(self.init_error)
        self.inits += 1
        self.open += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1
        self.open -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._need_init()
        return len(self.readings[0]) if self.readings else 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._need_init()
        return index

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        self._need_init()
        if handle == 0:
            self.current = self.readings.pop(0)
        gpu = self.current[handle]
        if isinstance(gpu, int):
            raise pynvml.NVMLError(gpu)
        # pynvml's friendly objects also carry gpuInstanceId / computeInstanceId.
        return [SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF,
                                computeInstanceId=0xFFFFFFFF) for pid, used in gpu]

    def _need_init(self) -> None:
        if self.open <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)


# --- the real NVML of this machine ---

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
    assert isinstance(session.gpu_memory_by_pid(), dict)
    session.close()
    session.close()


# --- recorded readings ---

def test_gpu_memory_is_summed_per_process_across_gpus() -> None:
    assert sum_by_pid([(10, 100), (11, 5), (10, 50), (13, 0)]) == {10: 150, 11: 5}


def test_a_process_whose_memory_nvml_withholds_anywhere_is_unknown_not_partial() -> None:
    assert sum_by_pid([(10, 100), (12, None), (12, 30), (10, 7)]) == {10: 107}


def test_readings_sum_each_engine_over_every_gpu() -> None:
    nvml = RecordedNvml([[[(100, 900 * MiB), (200, 300 * MiB)], [(100, 100 * MiB)]]])
    assert NvmlSession(nvml).gpu_memory_by_pid() == {100: 1000 * MiB, 200: 300 * MiB}


def test_not_available_figures_leave_the_process_out() -> None:
    # pynvml maps NVML_VALUE_NOT_AVAILABLE to None; older bindings pass the raw value.
    nvml = RecordedNvml([[[(100, None), (200, 300 * MiB)]], [[(100, NVML_VALUE_NOT_AVAILABLE), (200, 1)]]])
    session = NvmlSession(nvml)
    assert session.gpu_memory_by_pid() == {200: 300 * MiB}
    assert session.gpu_memory_by_pid() == {200: 1}


def test_the_session_initialises_nvml_once_for_many_readings() -> None:
    nvml = RecordedNvml([[[(100, n * MiB)]] for n in range(1, 61)])
    session = NvmlSession(nvml)
    figures = [session.gpu_memory_by_pid()[100] for _ in range(60)]
    assert figures == [n * MiB for n in range(1, 61)]
    assert (nvml.inits, nvml.shutdowns, session.inits) == (1, 0, 1)
    session.close()
    assert nvml.open == 0


def test_a_lost_gpu_reads_as_unknown_then_the_session_starts_again() -> None:
    nvml = RecordedNvml([[[(100, 5 * MiB)]], [pynvml.NVML_ERROR_GPU_IS_LOST], [[(100, 6 * MiB)]]])
    session = NvmlSession(nvml)
    assert session.gpu_memory_by_pid() == {100: 5 * MiB}
    assert session.gpu_memory_by_pid() == {}
    assert nvml.open == 0  # shut down after the error
    assert session.gpu_memory_by_pid() == {100: 6 * MiB}
    assert (nvml.inits, session.inits) == (2, 2)


def test_an_error_that_leaves_nvml_usable_keeps_the_session() -> None:
    nvml = RecordedNvml([[[(100, 5 * MiB)], pynvml.NVML_ERROR_NOT_SUPPORTED], [[(100, 6 * MiB)], []]])
    session = NvmlSession(nvml)
    assert session.gpu_memory_by_pid() == {}  # one GPU unreadable: no figure is trusted
    assert session.gpu_memory_by_pid() == {100: 6 * MiB}
    assert nvml.inits == 1


def test_a_host_without_a_driver_is_not_retried_every_reading() -> None:
    now = [0.0]
    nvml = RecordedNvml([[[(100, 1)]]], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    session = NvmlSession(nvml, retry_s=30.0, clock=lambda: now[0])
    attempts = []
    for t in (0.0, 1.0, 29.0):
        now[0] = t
        assert session.gpu_memory_by_pid() == {}
        attempts.append(session.open())
    assert attempts == [False, False, False]
    nvml.init_error = 0
    now[0] = 31.0
    assert session.gpu_memory_by_pid() == {100: 1}


def test_the_gpu_half_of_the_charge_comes_from_recorded_readings() -> None:
    from manager.engines.base import MemoryPlan
    from manager.memory import charge, growth_after_ready

    plan = MemoryPlan(weights=900 * MiB, kv_cache=200 * MiB, compute=400 * MiB, ctx_size=8192, gpu_layers=19,
                      growth=380 * MiB, growth_gpu=64 * MiB)
    estimate, growth = plan.total, growth_after_ready(plan, on_gpu=True)
    pid = 4242
    # At ready (with another process on the GPU), after the first requests, then NVML withholding the figure.
    nvml = RecordedNvml([[[(pid, 1100 * MiB), (1, 10 * MiB)]], [[(pid, 1190 * MiB)]], [[(pid, None)]]])
    session = NvmlSession(nvml)
    assert charge(estimate, None, None, growth) == estimate  # not measured yet
    at_ready = session.gpu_memory_by_pid()[pid]
    assert charge(estimate, at_ready, at_ready, growth) == 1164 * MiB  # the host prompt cache is not VRAM
    later = session.gpu_memory_by_pid()[pid]
    assert charge(estimate, later, at_ready, growth) == 1190 * MiB  # outgrew the forecast: what it holds
    withheld = session.gpu_memory_by_pid().get(pid)
    assert withheld is None and charge(estimate, withheld, at_ready, growth) == 1164 * MiB
