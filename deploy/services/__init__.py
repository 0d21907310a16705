"""LMForge as a per-user service that starts at login: what every platform's unit says, and which platform's is used.

Each backend module (systemd, launchd, windows) has the same functions: render(unit), path(), install(unit),
uninstall(), status() and start_command(). None needs root: every unit lives in the user's own directories and
runs as that user.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

from catalog.store_files import write_atomic
from manager.config import ENV_OVERRIDES

# Never written into a unit: a unit file is readable by every user (0644), and a key belongs in config.toml (0600).
# Each variable with the key of config.toml that takes its value there.
SECRET_ENV = {ENV_OVERRIDES["api_key"]: "api_key"}
# Carried into the unit so that the service serves the home it was installed from, with the same overrides (port,
# engine programs, body limit): a service manager starts it with its own environment, not the shell's. Every
# variable manager/config.py reads over config.toml, less the secrets. LMFORGE_HOME is always set (absolute).
CARRIED_ENV = tuple(name for name in ENV_OVERRIDES.values() if name not in SECRET_ENV)
MANAGER_TIMEOUT_S = 30.0


class UnsupportedPlatform(Exception):
    """No per-user service manager that LMForge knows runs on this platform."""


class UnitError(ValueError):
    """A value (a path, a variable) that the platform's unit format cannot hold as it is."""


@dataclass(frozen=True)
class Unit:
    """What the service runs, in which environment, as whom, and where a launcher without a journal writes."""

    argv: tuple[str, ...]
    environment: dict[str, str]
    user: str
    logs: Path


@dataclass
class Outcome:
    """What install or uninstall did: the unit file's fate (created, updated, unchanged, removed, absent), what the
    service manager did, what the user should know, and an error when the manager refused."""

    path: Path
    action: str
    done: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str = ""


@dataclass
class Status:
    """The unit file and, when the service manager could be asked, what it says; `enabled`/`active` None: it could
    not be asked, `reason` says why and `hint` what to run."""

    manager: str
    path: Path
    installed: bool
    enabled: bool | None = None
    active: bool | None = None
    state: str = ""
    pid: int | None = None
    reason: str = ""
    hint: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "path": str(self.path), "platform": sys.platform}


def backend(platform: str = sys.platform) -> ModuleType:
    """The service backend of this platform."""
    if platform.startswith("linux"):
        from deploy.services import systemd
        return systemd
    if platform == "darwin":
        from deploy.services import launchd
        return launchd
    if platform == "win32":
        from deploy.services import windows
        return windows
    raise UnsupportedPlatform(f"LMForge cannot run as a service on {platform} (systemd, launchd and Windows' Task "
                              "Scheduler are supported); start it with `lmforge start` from your login script")


def unit_for(home: Path, logs: Path) -> Unit:
    """`lmforge start --foreground` with this interpreter, for this home, as the current user."""
    env = {"LMFORGE_HOME": str(home.absolute())}
    env.update({name: os.environ[name] for name in CARRIED_ENV if os.environ.get(name)})
    return Unit(argv=(sys.executable, "-m", "gateway.cli", "start", "--foreground"), environment=env,
                user=getpass.getuser(), logs=logs)


def left_out() -> dict[str, str]:
    """The secrets set in this environment, which the unit does not carry (the service runs without them), each
    with its key in config.toml."""
    return {name: key for name, key in SECRET_ENV.items() if os.environ.get(name)}


def write_unit(path: Path, content: bytes) -> str:
    """Write the unit if its content changed (atomically: a service manager never reads half a file); created,
    updated or unchanged."""
    try:
        before = path.read_bytes()
    except FileNotFoundError:
        before = None
    if before == content:
        return "unchanged"
    write_atomic(path, content, 0o644)
    return "created" if before is None else "updated"


def remove_unit(path: Path) -> str:
    try:
        path.unlink()
    except FileNotFoundError:
        return "absent"
    return "removed"


@dataclass(frozen=True)
class Ran:
    """A service manager's answer; `code` None: the tool is not there, or it did not answer in time."""

    argv: tuple[str, ...]
    code: int | None
    out: str
    err: str
    missing: bool = False  # the tool is not installed

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def reason(self) -> str:
        """Its own first line of complaint, for messages."""
        for text in (self.err, self.out):
            if text.strip():
                return text.strip().splitlines()[0]
        return f"`{' '.join(self.argv)}` exited with status {self.code}"


def run(*argv: str, timeout: float = MANAGER_TIMEOUT_S) -> Ran:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return Ran(argv, None, "", f"{argv[0]} not found", missing=True)
    except subprocess.TimeoutExpired:
        return Ran(argv, None, "", f"`{' '.join(argv)}` did not answer within {timeout:g} s")
    return Ran(argv, done.returncode, done.stdout, done.stderr)
