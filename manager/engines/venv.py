"""EngineVenv: an engine installed with pip into a virtual environment of its own under the home.

MLX and SGLang are Python servers with heavy dependencies (torch, for SGLang); each gets its own environment at
`<home>/engines/<name>/venv`, so none of them ever enters LMForge's. A marker file beside it records what was
installed: an environment whose marker does not match the requirements asked for is installed again.
PipEngine is the part of such an engine's adapter that finds, or installs, the Python it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from manager.config import Paths
from manager.engines.base import EngineMissing, Progress

MARKER = "installed.json"


class EngineVenv:
    def __init__(self, paths: Paths, name: str, requirements: tuple[str, ...]) -> None:
        self.name, self.requirements = name, requirements
        self.root = paths.engines / name
        self.dir = self.root / "venv"

    @property
    def python(self) -> Path:
        return self.dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def find(self) -> Path | None:
        """The environment's Python when it holds exactly what is asked for; else None (install it)."""
        try:
            marker = json.loads((self.root / MARKER).read_text())
        except (OSError, ValueError):
            return None
        ok = marker.get("requirements") == list(self.requirements) and self.python.is_file()
        return self.python if ok else None

    def installed(self) -> dict[str, str]:
        """What the marker says was installed: package versions by name; {} when nothing is."""
        try:
            return dict(json.loads((self.root / MARKER).read_text()).get("versions", {}))
        except (OSError, ValueError):
            return {}

    def install(self, report: Progress) -> Path:
        """Create the environment and pip-install the requirements into it (from the registry pip is set up for).
        EngineMissing, with pip's last lines, when it fails; a half-made environment is removed."""
        (self.root / MARKER).unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        report(0.0, f"creating a virtual environment for {self.name} in {self.dir}")
        self._run([sys.executable, "-m", "venv", str(self.dir)], report)
        report(5.0, f"installing {' '.join(self.requirements)} (pip)")
        self._run([str(self.python), "-m", "pip", "install", "--disable-pip-version-check", *self.requirements],
                  report)
        versions = self._versions()
        marker = {"requirements": list(self.requirements), "versions": versions}
        tmp = self.root / f"{MARKER}.tmp"
        tmp.write_text(json.dumps(marker, indent=2))
        os.replace(tmp, self.root / MARKER)
        report(100.0, f"{self.name} installed: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
        return self.python

    def _run(self, argv: list[str], report: Progress) -> None:
        log_path = self.root / "install.log"
        with log_path.open("a") as log, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                          text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if line.startswith(("Collecting", "Downloading", "Installing", "Successfully")):
                    report(None, line.strip())
        if proc.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-12:])
            raise EngineMissing(f"installing {self.name} failed ({' '.join(argv[:4])}...); the full log is "
                                f"{log_path}\n{tail}")

    def _versions(self) -> dict[str, str]:
        """The versions pip installed for the requirements' own packages."""
        names = [_package(r) for r in self.requirements]
        script = ("import importlib.metadata as m, json, sys\n"
                  "out = {}\n"
                  "for n in sys.argv[1:]:\n"
                  "    try: out[n] = m.version(n)\n"
                  "    except m.PackageNotFoundError: pass\n"
                  "print(json.dumps(out))")
        done = subprocess.run([str(self.python), "-c", script, *names], capture_output=True, text=True, timeout=60)
        try:
            return dict(json.loads(done.stdout))
        except ValueError:
            return {}


class PipEngine:
    """The Python an engine runs: the one its settings name (`python_setting`, e.g. "sglang.python"), else our
    environment's, installed with the requirements its settings name, else its adapter's `defaults`."""

    def __init__(self, paths: Paths, name: str, *, python: str, requirements: Sequence[str],
                 defaults: tuple[str, ...], python_setting: str) -> None:
        self.requirements = tuple(requirements) or defaults
        self.venv = EngineVenv(paths, name, self.requirements)
        self.python, self.python_setting = python, python_setting

    def find_binary(self) -> Path | None:
        """The configured Python (EngineMissing when it is not there), or our environment's once installed."""
        if self.python:
            path = Path(self.python).expanduser()
            if not path.is_file():
                raise EngineMissing(f"{self.python_setting} points to {path}, which does not exist")
            return path
        return self.venv.find()

    def install(self, problem: str | None, report: Progress) -> Path:
        """pip-install the engine into its own environment; refused, before anything is downloaded, with the
        `problem` the adapter found with this host (None: none)."""
        if problem:
            raise EngineMissing(problem)
        return self.venv.install(report)


def _package(requirement: str) -> str:
    """The distribution name of a requirement: "mlx[cpu]>=0.25" is "mlx"."""
    for stop in "[<>=!~; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement
