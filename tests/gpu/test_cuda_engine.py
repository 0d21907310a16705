"""The CUDA path on a real NVIDIA GPU: llama-server built with -DGGML_CUDA=ON by LMForge's own installer, a model
loaded through LMForge with its layers on the GPU, and the budget's VRAM figure checked against nvidia-smi.

Skipped without a GPU (tests/conftest.py). On a GPU machine with no network, point LMFORGE_LLAMA_SERVER at a CUDA
build made there (`lmforge engine install --print-path` builds one when nvcc is present)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.instance import Instance, running_instance, wait_until

pytestmark = pytest.mark.gpu
MiB = 1024**2


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    with running_instance(tmp_path_factory.mktemp("cuda") / "home", llama_server,
                          {"tiny:chat": models_dir / "cycle.gguf"}) as inst:
        yield inst


def smi_used_by_pid() -> dict[int, int]:
    """nvidia-smi's own per-process figures, in bytes."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return {int(pid): int(used) * MiB for pid, used in (line.split(",") for line in out.splitlines() if line.strip())}


def test_the_engine_is_a_cuda_build_and_the_model_runs_on_the_gpu(inst: Instance, llama_server: str) -> None:
    version = subprocess.run([llama_server, "--version"], capture_output=True, text=True, timeout=60)
    assert "CUDA" in version.stdout + version.stderr, "LMFORGE_LLAMA_SERVER is not a CUDA build"
    code, reply = inst.post("/v1/chat/completions", {"model": "tiny:chat", "max_tokens": 8,
                                                     "messages": [{"role": "user", "content": "hi"}]})
    assert code == 200, reply
    slot = inst.slot("tiny:chat")
    assert slot is not None and slot["gpu_layers"] > 0


def test_the_budget_charges_what_nvidia_smi_says_the_engine_holds(inst: Instance) -> None:
    inst.post("/v1/chat/completions", {"model": "tiny:chat", "max_tokens": 8,
                                       "messages": [{"role": "user", "content": "hi"}]})
    slot = wait_until(lambda: (s := inst.slot("tiny:chat")) and s.get("measured_bytes") and s, timeout=30,
                      what="a VRAM reading of the engine")
    used = smi_used_by_pid()
    assert slot["pid"] in used, json.dumps(used)
    # NVML (the manager's reading) and nvidia-smi read the same counters: equal to the MiB nvidia-smi rounds to.
    assert abs(slot["measured_bytes"] - used[slot["pid"]]) <= MiB
