"""Where llama-server's layers go on hosts with several NVIDIA GPUs, from GPU readings as the prober takes them.

The readings are in NVML's shape: each card's total as NVML reports it, and free figures of hosts in use (other
processes holding some of each GPU). No machine here has a GPU to take them from.
"""

from __future__ import annotations

import dataclasses
import json

from manager.engines.base import MemoryPlan
from manager.engines.gpus import gpu_environment, visible_gpus
from manager.engines.llamacpp_gpus import CUDA_CONTEXT, Placement, main_gpu, place, split_args, usable
from manager.protocol import GpuInfo

MiB = 1024**2
GiB = 1024**3
FRACTION = 0.9  # Settings.memory_fraction's default
A100_80GB = 85899345920  # 81920 MiB
RTX_3090 = 25769803776  # 24576 MiB
LAYER = 400 * MiB  # about one layer of a 70B model at 4 bits


def gpu(index: int, free_mib: int, total: int = A100_80GB, vendor: str = "nvidia") -> GpuInfo:
    return GpuInfo(index=index, vendor=vendor, name="NVIDIA A100-SXM4-80GB" if total == A100_80GB else
                   "NVIDIA GeForce RTX 3090", vram_total=total, vram_free=free_mib * MiB, driver="550.54.15",
                   compute_capability="8.0" if total == A100_80GB else "8.6")


def plan_of(placement: Placement) -> MemoryPlan:
    return MemoryPlan(weights=1, kv_cache=1, compute=1, ctx_size=8192, gpu_layers=81, gpu_host=True,
                      gpus=placement.gpus, split=placement.split)


def test_two_gpus_with_unequal_free_vram_share_the_layers_in_proportion() -> None:
    two = (gpu(0, 20_000, RTX_3090), gpu(1, 10_000, RTX_3090))  # the first holds 4 GiB of another process
    placement = place(two, need=24 * GiB, layer_bytes=LAYER, fraction=FRACTION)
    room = [usable(g, FRACTION) for g in two]
    assert placement.gpus == (0, 1)
    assert placement.split == (round(room[0] / sum(room), 4), round(room[1] / sum(room), 4))
    assert 0.66 < placement.split[0] < 0.68  # (18000 - 512) / (18000 - 512 + 9000 - 512) MiB
    assert split_args(plan_of(placement)) == ["--tensor-split", f"{placement.split[0]:g},{placement.split[1]:g}",
                                              "--main-gpu", "0"]
    assert gpu_environment(plan_of(placement)) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1"}


def test_the_main_gpu_is_the_one_with_the_most_free_vram_numbered_as_the_engine_sees_it() -> None:
    four = (gpu(0, 30_000), gpu(1, 50_000), gpu(2, 75_000), gpu(3, 60_000))
    placement = place(four, need=150 * GiB, layer_bytes=LAYER, fraction=FRACTION)
    assert placement.gpus == (0, 1, 2, 3) and abs(sum(placement.split) - 1) < 1e-3
    assert main_gpu(placement.split) == 2
    assert split_args(plan_of(placement))[-2:] == ["--main-gpu", "2"]


def test_a_nearly_full_gpu_takes_no_part() -> None:
    # GPU 1 has 700 MiB free: beside the engine's CUDA context, not room for one layer.
    four = (gpu(0, 80_000), gpu(1, 700), gpu(2, 40_000), gpu(3, 80_000))
    placement = place(four, need=120 * GiB, layer_bytes=LAYER, fraction=FRACTION)
    assert placement.gpus == (0, 2, 3) and len(placement.split) == 3
    assert placement.split[0] == placement.split[2] > placement.split[1]
    assert gpu_environment(plan_of(placement))["CUDA_VISIBLE_DEVICES"] == "0,2,3"
    assert split_args(plan_of(placement))[-1] == "0"  # GPUs 0 and 3 tie: the first of them


def test_a_model_that_fits_on_one_gpu_is_pinned_to_the_one_with_the_most_free() -> None:
    four = (gpu(0, 30_000), gpu(1, 79_000), gpu(2, 79_500), gpu(3, 12_000))
    placement = place(four, need=40 * GiB, layer_bytes=LAYER, fraction=FRACTION)
    assert placement == Placement(gpus=(2,))
    assert split_args(plan_of(placement)) == []  # one GPU: nothing to split
    assert gpu_environment(plan_of(placement)) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2"}


def test_fitting_on_one_gpu_leaves_room_for_its_cuda_context() -> None:
    two = (gpu(0, 10_000), gpu(1, 9_000))
    edge = usable(two[0], FRACTION)
    assert edge == int(10_000 * MiB * FRACTION) - CUDA_CONTEXT
    assert place(two, need=edge, layer_bytes=LAYER, fraction=FRACTION).gpus == (0,)
    assert place(two, need=edge + 1, layer_bytes=LAYER, fraction=FRACTION).gpus == (0, 1)


def test_when_only_one_gpu_can_hold_a_layer_the_load_stays_on_it() -> None:
    two = (gpu(0, 20_000, RTX_3090), gpu(1, 600, RTX_3090))
    assert place(two, need=30 * GiB, layer_bytes=LAYER, fraction=FRACTION) == Placement(gpus=(0,))


def test_one_gpu_or_nothing_offloaded_pins_nothing() -> None:
    assert place((gpu(0, 70_000),), need=100 * GiB, layer_bytes=LAYER, fraction=FRACTION) == Placement()
    assert place((gpu(0, 70_000), gpu(1, 70_000)), need=0, layer_bytes=LAYER, fraction=FRACTION) == Placement()
    assert place((), need=GiB, layer_bytes=LAYER, fraction=FRACTION) == Placement()
    assert gpu_environment(plan_of(Placement())) == {} and split_args(plan_of(Placement())) == []


def test_gpus_of_other_vendors_are_not_placed() -> None:
    mixed = (gpu(0, 20_000, vendor="amd"), gpu(1, 20_000), gpu(2, 20_000, vendor="amd"))
    assert [g.index for g in visible_gpus(mixed, None) or ()] == [1]
    assert place(mixed, need=30 * GiB, layer_bytes=LAYER, fraction=FRACTION) == Placement()


def test_the_managers_cuda_visible_devices_bounds_the_choice() -> None:
    four = (gpu(0, 80_000), gpu(1, 10_000), gpu(2, 20_000), gpu(3, 30_000))
    shown = place(four, need=30 * GiB, layer_bytes=LAYER, fraction=FRACTION, cuda_visible="2,3")
    assert shown.gpus == (2, 3) and shown.split[1] > shown.split[0]  # GPU 0 has more free, but is not ours
    assert place(four, need=10 * GiB, layer_bytes=LAYER, fraction=FRACTION, cuda_visible="1, 3").gpus == (3,)
    # CUDA reads the list up to the first index it does not know, as do we: one GPU left, nothing to choose.
    assert [g.index for g in visible_gpus(four, "1,7,2") or ()] == [1]
    assert place(four, need=30 * GiB, layer_bytes=LAYER, fraction=FRACTION, cuda_visible="1,7,2") == Placement()
    # UUIDs and MIG instances are CUDA's to resolve: the engine inherits them unpinned and unsplit.
    uuid = "GPU-5c1e4ab7-2c2e-0b1e-7b0f-1d7b9c3f3a11,GPU-8d0f6e4a-9a44-27b1-3c53-4f5b6a7c8d9e"
    assert visible_gpus(four, uuid) is None
    assert place(four, need=30 * GiB, layer_bytes=LAYER, fraction=FRACTION, cuda_visible=uuid) == Placement()
    assert place(four, need=30 * GiB, layer_bytes=LAYER, fraction=FRACTION, cuda_visible="") == Placement()


def test_a_placed_plan_survives_the_engine_records_json_and_old_records_still_read() -> None:
    placement = place((gpu(0, 20_000), gpu(1, 10_000)), need=24 * GiB, layer_bytes=LAYER, fraction=FRACTION)
    plan = dataclasses.replace(plan_of(placement), draft="/models/d.gguf", draft_gpu_layers=29)
    record = json.loads(json.dumps(dataclasses.asdict(plan)))  # as manager/engine_starts.py writes it
    assert record["gpus"] == [0, 1]
    assert MemoryPlan(**record) == plan  # as manager/adoption.py reads it: tuples again
    old = {"weights": 1, "kv_cache": 2, "compute": 3, "ctx_size": 4096, "gpu_layers": 33, "ctx_max": 0,
           "growth": 0, "growth_gpu": 0}
    assert MemoryPlan(**old).gpus == () and MemoryPlan(**old).draft == "" and not MemoryPlan(**old).gpu_host
