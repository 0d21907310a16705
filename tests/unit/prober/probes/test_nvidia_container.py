"""Our engines' VRAM where NVML cannot say it per process (containers), through the NVML seam fed with readings
recorded as NVML returns them, on bare metal and in containers, on one GPU and on two.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from manager.readings import EstimatedReading, engine_memory, vram_readings
from prober.probes.nvidia import NVML_VALUE_NOT_AVAILABLE, NvmlSession
from prober.probes.nvidia_container import MIN_ESTIMATE, EngineVram

MiB = 1024**2
GiB = 1024**3

# --- readings as NVML gives them ---
# Each reading is one gpu_samples() call: per GPU, nvmlDeviceGetMemoryInfo's total and free, and what
# nvmlDeviceGetComputeRunningProcesses returned: (pid, usedGpuMemory) pairs, or the NVML error it raised.
# The shapes are those NVML is documented and reported to give (NVIDIA/nvidia-docker#179 and #1483: a container
# sees the host's pids or none; pynvml maps NVML_VALUE_NOT_AVAILABLE to None, older bindings pass it raw; some
# drivers give a container its own pids with 0 bytes); the sizes are an RTX 4090's and an A100 80GB's.
RTX_4090 = 24564  # MiB, as NVML reports its total
A100 = 81920
DESKTOP = 412  # MiB in use on a desktop's GPU with no compute process: the display server's graphics context
DRIVER = 527  # MiB in use on an idle A100: what the driver keeps


def gpu(total: int, used: int, processes: list[tuple[int, int | None]] | int) -> dict[str, Any]:
    """One GPU in one reading; `total` and `used` in MiB, process figures in bytes as NVML gives them."""
    return {"total": total * MiB, "free": (total - used) * MiB, "processes": processes}


ENGINE, OTHER_ENGINE = 57, 112  # our engines' pids inside the container
HOST_PID, NEIGHBOUR = 2_914_603, 2_870_011  # the host's pid of ENGINE; another container's process

BARE_METAL = [
    [gpu(RTX_4090, DESKTOP, [])],  # idle: the desktop is no compute process
    [gpu(RTX_4090, DESKTOP + 5306 + 1200, [(41877, 5306 * MiB), (40001, 1200 * MiB)])],  # ours and a notebook's
]
CONTAINER_EMPTY_LIST = [
    [gpu(A100, DRIVER, [])],
    [gpu(A100, DRIVER + 9043, [])],  # the engine holds 9043 MiB, and NVML lists no process
]
CONTAINER_NOT_AVAILABLE = [
    [gpu(A100, DRIVER, [])],
    [gpu(A100, DRIVER + 9043, [(ENGINE, None)])],  # pynvml's None for NVML_VALUE_NOT_AVAILABLE
    [gpu(A100, DRIVER + 9043, [(ENGINE, NVML_VALUE_NOT_AVAILABLE)])],  # the raw value, from older bindings
    [gpu(A100, DRIVER + 9043, [(ENGINE, 0)])],  # the container's own pid, with 0 bytes
]
CONTAINER_HOST_PIDS = [  # another container's job started first; then ours, both listed by host pid
    [gpu(A100, DRIVER + 20480, [(NEIGHBOUR, 20480 * MiB)])],
    [gpu(A100, DRIVER + 20480 + 9043, [(NEIGHBOUR, 20480 * MiB), (HOST_PID, 9043 * MiB)])],
]
CONTAINER_TWO_ENGINES = [
    [gpu(A100, DRIVER + 20480, [])],  # the neighbour, invisible from here too
    [gpu(A100, DRIVER + 20480 + 9043 + 3014, [])],  # two engines planned 3:1
]
CONTAINER_TWO_GPUS = [  # the neighbour on GPU 1; our engine's layers split over both GPUs
    [gpu(A100, DRIVER, []), gpu(A100, DRIVER + 20480, [])],
    [gpu(A100, DRIVER + 6000, []), gpu(A100, DRIVER + 20480 + 3043, [])],
]
BARE_METAL_TWO_GPUS = [
    [gpu(A100, DRIVER + 6000, [(41877, 6000 * MiB)]), gpu(A100, DRIVER + 3043, [(41877, 3043 * MiB)])],
]


class RecordedNvml:
    """pynvml's functions replaying recorded readings: nvmlDeviceGetMemoryInfo on GPU 0 starts the next one."""

    NVMLError = pynvml.NVMLError

    def __init__(self, readings: list[list[dict[str, Any]]]) -> None:
        self.readings = list(readings)
        self.current: list[dict[str, Any]] = []
        self.open = 0

    def nvmlInit(self) -> None:
        self.open += 1

    def nvmlShutdown(self) -> None:
        self.open -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.readings[0])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        if self.open <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if handle == 0:
            self.current = self.readings.pop(0)
        gpu = self.current[handle]
        if isinstance(gpu, int):
            raise pynvml.NVMLError(gpu)
        return SimpleNamespace(total=gpu["total"], free=gpu["free"], used=gpu["total"] - gpu["free"])

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        processes = self.current[handle]["processes"]
        if isinstance(processes, int):
            raise pynvml.NVMLError(processes)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
                for pid, used in processes]


def replay(readings: list[list[dict[str, Any]]], groups: dict[int, int] | None = None) -> EngineVram:
    """The readings replayed; `groups`: the process group of each pid that is in one of ours (none otherwise)."""
    return EngineVram(NvmlSession(RecordedNvml(readings)).gpu_samples, group=(groups or {}).get)


# --- bare metal: NVML's figures as they are ---

SGLANG, SCHEDULER_0, SCHEDULER_1 = 4100, 4133, 4134  # SGLang's VRAM is held by its scheduler children


def test_an_engines_children_count_as_the_engine() -> None:
    """SGLang with --tp-size 2: NVML lists one scheduler child per GPU, never the engine we started; each child runs
    in the engine's process group."""
    readings = [[gpu(A100, DRIVER + 30000, [(SCHEDULER_0, 30000 * MiB)]),
                 gpu(A100, DRIVER + 29000, [(SCHEDULER_1, 29000 * MiB), (40001, 0)])]]
    vram = replay(readings, groups={SCHEDULER_0: SGLANG, SCHEDULER_1: SGLANG, 40001: 40001})
    figure = vram.read([SGLANG])[SGLANG]
    assert (figure.bytes, figure.estimated) == (59000 * MiB, False)


def test_bare_metal_figures_are_nvmls_own_and_another_process_is_not_ours() -> None:
    vram = replay(BARE_METAL)
    assert vram.read([]) == {}
    figure = vram.read([41877])[41877]
    assert (figure.bytes, figure.estimated) == (5306 * MiB, False)


def test_bare_metal_figures_add_up_over_two_gpus() -> None:
    figure = replay(BARE_METAL_TWO_GPUS).read([41877])[41877]
    assert (figure.bytes, figure.estimated) == (9043 * MiB, False)


def test_an_engine_still_starting_on_bare_metal_has_no_figure_rather_than_a_near_zero_one() -> None:
    vram = replay([[gpu(RTX_4090, DESKTOP, [])], [gpu(RTX_4090, DESKTOP + 3, [])]])
    vram.read([])
    assert vram.read([41877]) == {}  # not in NVML's list yet, and the GPU holds no more than before


def test_where_nvml_lists_our_pids_an_engine_it_does_not_list_holds_nothing_yet() -> None:
    readings = [
        [gpu(RTX_4090, DESKTOP, [])],
        [gpu(RTX_4090, DESKTOP + 5306 + 900, [(41877, 5306 * MiB)])],  # 900 MiB more: a notebook's graphics
    ]
    vram = replay(readings)
    vram.read([])
    figures = vram.read([41877, 41990])
    assert set(figures) == {41877} and not figures[41877].estimated and vram.sighted


def test_once_nvml_has_listed_our_pids_an_unlisted_engine_holds_nothing_in_later_readings_too() -> None:
    readings = [
        [gpu(RTX_4090, DESKTOP, [])],
        [gpu(RTX_4090, DESKTOP + 5306, [(41877, 5306 * MiB)])],
        [gpu(RTX_4090, DESKTOP, [])],  # unloaded
        [gpu(RTX_4090, DESKTOP + 900, [])],  # the next engine not started on the GPU yet; a notebook grew
    ]
    vram = replay(readings)
    vram.read([])
    assert set(vram.read([41877])) == {41877}
    vram.read([])
    assert vram.read([41990]) == {}


# --- containers: device totals less the baseline ---

def test_a_container_where_nvml_lists_no_process_gets_the_devices_growth() -> None:
    vram = replay(CONTAINER_EMPTY_LIST)
    vram.read([])
    figure = vram.read([ENGINE])[ENGINE]
    assert (figure.bytes, figure.estimated) == (9043 * MiB, True)
    assert "estimated" in figure.estimate and f"{DRIVER * MiB / GiB:.1f} GiB" in figure.estimate


@pytest.mark.parametrize("reading", [1, 2, 3], ids=["none", "raw-not-available", "zero"])
def test_a_container_where_nvml_withholds_our_engines_figure_gets_the_devices_growth(reading: int) -> None:
    vram = replay([CONTAINER_NOT_AVAILABLE[0], CONTAINER_NOT_AVAILABLE[reading]])
    vram.read([])
    figure = vram.read([ENGINE])[ENGINE]
    assert (figure.bytes, figure.estimated) == (9043 * MiB, True)


def test_host_pids_in_a_container_are_not_taken_for_ours_and_the_neighbour_is_subtracted() -> None:
    vram = replay(CONTAINER_HOST_PIDS)
    vram.read([])
    figures = vram.read([ENGINE])
    assert set(figures) == {ENGINE} and not vram.sighted
    assert (figures[ENGINE].bytes, figures[ENGINE].estimated) == (9043 * MiB, True)


def test_two_engines_in_a_container_share_the_growth_by_plan() -> None:
    vram = replay(CONTAINER_TWO_ENGINES)
    vram.read([])
    figures = vram.read([ENGINE, OTHER_ENGINE], {ENGINE: 9 * GiB, OTHER_ENGINE: 3 * GiB})
    pool = (9043 + 3014) * MiB
    assert figures[ENGINE].bytes + figures[OTHER_ENGINE].bytes == pool
    assert figures[ENGINE].bytes == pool * 3 // 4 and figures[OTHER_ENGINE].bytes == pool // 4
    assert "among 2 engines" in figures[ENGINE].estimate


def test_engines_without_plans_share_equally_and_one_without_a_plan_weighs_as_the_others() -> None:
    equal = replay(CONTAINER_TWO_ENGINES)
    equal.read([])
    assert [f.bytes for f in equal.read([ENGINE, OTHER_ENGINE]).values()] == [(9043 + 3014) * MiB // 2] * 2
    three = replay([CONTAINER_TWO_ENGINES[0], [gpu(A100, DRIVER + 20480 + 12000, [])]])
    three.read([])
    figures = three.read([1, 2, 3], {1: 4 * GiB, 2: 2 * GiB})  # 3 weighs as the average, 3 GiB
    shares = [figures[pid].bytes for pid in (1, 2, 3)]
    assert sum(shares) == 12000 * MiB  # the rounding goes to the largest share
    assert shares == pytest.approx([12000 * MiB * 4 / 9, 12000 * MiB * 2 / 9, 12000 * MiB * 3 / 9], abs=2)


def test_two_gpus_each_keep_their_own_baseline() -> None:
    vram = replay(CONTAINER_TWO_GPUS)
    vram.read([])
    assert vram.baseline == {0: DRIVER * MiB, 1: (DRIVER + 20480) * MiB}
    figure = vram.read([ENGINE])[ENGINE]
    assert (figure.bytes, figure.estimated) == ((6000 + 3043) * MiB, True)


def test_a_gpu_whose_processes_nvml_will_not_list_makes_every_figure_an_estimate() -> None:
    readings = [
        [gpu(A100, DRIVER, []), gpu(A100, DRIVER, [])],
        [gpu(A100, DRIVER + 6000, [(41877, 6000 * MiB)]),
         gpu(A100, DRIVER + 3043, pynvml.NVML_ERROR_NO_PERMISSION)],
    ]
    vram = replay(readings)
    vram.read([])
    figure = vram.read([41877])[41877]  # its share of GPU 1 is unknown: GPU 0's figure alone would undercount
    assert (figure.bytes, figure.estimated) == (9043 * MiB, True)


def test_without_a_baseline_an_engine_has_no_figure_until_one_is_seen() -> None:
    """A manager that adopted running engines never saw the GPUs without them: unknown, not all of the GPU."""
    vram = replay([CONTAINER_TWO_ENGINES[1], CONTAINER_TWO_ENGINES[0], CONTAINER_TWO_ENGINES[1]])
    assert vram.read([ENGINE, OTHER_ENGINE]) == {}
    assert vram.read([]) == {}  # they stopped: what is left is other processes'
    assert sum(f.bytes for f in vram.read([ENGINE, OTHER_ENGINE]).values()) == (9043 + 3014) * MiB


def test_a_gpu_added_since_the_baseline_waits_for_a_new_one() -> None:
    vram = replay([CONTAINER_TWO_GPUS[1]])
    vram.baseline = {0: DRIVER * MiB}
    assert vram.read([ENGINE]) == {}


def test_growth_below_the_smallest_cuda_context_is_no_figure() -> None:
    vram = replay([[gpu(A100, DRIVER, [])], [gpu(A100, DRIVER + MIN_ESTIMATE // MiB - 1, [])]])
    vram.read([])
    assert vram.read([ENGINE]) == {}


def test_a_lost_gpu_reads_as_no_figure_and_the_baseline_stays() -> None:
    vram = replay([CONTAINER_EMPTY_LIST[0], [pynvml.NVML_ERROR_GPU_IS_LOST], CONTAINER_EMPTY_LIST[1]])
    vram.read([])
    assert vram.read([ENGINE]) == {}
    assert vram.read([ENGINE])[ENGINE].bytes == 9043 * MiB  # NVML opened again, the baseline kept


# --- what the manager's table receives ---

def test_the_table_takes_an_estimate_as_any_reading_and_can_tell_it_apart() -> None:
    vram = replay(CONTAINER_HOST_PIDS + [BARE_METAL[1]])
    vram.read([])
    estimated = vram_readings(vram, [ENGINE])[ENGINE]
    held, private = estimated
    assert isinstance(estimated, EstimatedReading) and estimated.estimated
    assert held == private == 9043 * MiB and estimated.basis.startswith("estimated")
    measured = vram_readings(vram, [41877])[41877]
    assert measured == (5306 * MiB, 5306 * MiB) and not getattr(measured, "estimated", False)


def test_an_estimate_is_what_the_slot_table_charges() -> None:
    from tests.support.table_driver import CHAT, Driver

    d = Driver(budget_mb=20_000)
    d.warm("a", size_mb=8000)
    slot = d.table.slots[("a", CHAT)]
    vram = replay(CONTAINER_EMPTY_LIST)
    vram.read([])
    d.table.measured(vram_readings(vram, [slot.pid], {slot.pid: slot.estimate}))
    d.settle()
    assert slot.measured_bytes == slot.private_bytes == slot.at_ready_bytes == 9043 * MiB
    assert slot.charged >= 9043 * MiB


def test_engine_memory_on_a_host_without_nvidia_reads_ram_as_before() -> None:
    import os

    from prober.probes.nvidia import nvidia_gpus

    if nvidia_gpus():
        pytest.skip("this machine has an NVIDIA GPU")
    assert engine_memory([], on_gpu=False) == {}
    held, private = engine_memory([os.getpid()], on_gpu=False)[os.getpid()]
    assert held > 0 and private > 0
