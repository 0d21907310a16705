"""macOS: a launchd agent in ~/Library/LaunchAgents, loaded into the user's GUI domain at every login."""

from __future__ import annotations

import os
import plistlib
import shlex
from pathlib import Path

from deploy.services import Outcome, Ran, Status, Unit, UnitError, remove_unit, run, write_unit

LABEL = "com.lmforge.daemon"
MANAGER = "launchd"
# launchd agents get a minimal PATH; Homebrew's tools (on Apple silicon and on Intel) come first.
AGENT_PATH = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
# SIGTERM to supervisord, which stops the programs in order within 55 s; launchd's default wait is 20 s.
EXIT_TIMEOUT_S = 90
THROTTLE_S = 10  # the least time between two starts after a failure


def path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def log_file(unit: Unit) -> Path:
    """launchd has no journal: what `lmforge start --foreground` itself prints (a failure to start) goes here."""
    return unit.logs / "service.log"


def start_command() -> str:
    return f"launchctl kickstart {_target()}"


def render(unit: Unit) -> bytes:
    agent = {
        "Label": LABEL,
        "ProgramArguments": list(unit.argv),
        "EnvironmentVariables": {"PATH": AGENT_PATH, **unit.environment},
        "RunAtLoad": True,
        # Started again after a failure, not after a clean exit (`lmforge stop`, or LMForge already running).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_S,
        "ExitTimeOut": EXIT_TIMEOUT_S,
        "StandardOutPath": str(log_file(unit)),
        "StandardErrorPath": str(log_file(unit)),
    }
    try:
        return plistlib.dumps(agent, fmt=plistlib.FMT_XML, sort_keys=False)
    except ValueError as exc:  # plistlib refuses control characters in strings
        raise UnitError(f"a launchd agent cannot hold this value: {exc}") from None


def install(unit: Unit) -> Outcome:
    outcome = Outcome(path(), write_unit(path(), render(unit)))
    log_file(unit).parent.mkdir(parents=True, exist_ok=True)  # launchd opens the file but makes no folder
    _launchctl("enable", _target())  # a `launchctl disable` outlives the agent's file and would block it
    if _launchctl("print", _target()).ok:
        outcome.done.append("already loaded: it starts at every login")
        if outcome.action == "updated":
            outcome.warnings.append(f"launchd keeps the loaded agent until `launchctl bootout {_target()} && "
                                    f"launchctl bootstrap {_domain()} {_shell_word(path())}` (which restarts "
                                    "LMForge and unloads its models)")
        return outcome
    loaded = _launchctl("bootstrap", _domain(), str(path()))
    if loaded.ok:
        outcome.done.append(f"loaded and started: it starts at every login (launchctl bootstrap {_domain()})")
    else:
        # Over ssh there is no GUI domain to load into; launchd still loads the agent at the next login.
        outcome.warnings.append(f"launchd did not load the agent ({loaded.reason}): it starts at your next login; "
                                f"to start it now, from your desktop session run: launchctl bootstrap {_domain()} "
                                f"{_shell_word(path())}")
    return outcome


def uninstall() -> Outcome:
    agent = path()
    if not agent.exists():
        return Outcome(agent, "absent")
    outcome = Outcome(agent, "removed")
    if _launchctl("bootout", _target()).ok:
        outcome.done.append("stopped and unloaded")
    elif _launchctl("print", _target()).ok:
        outcome.warnings.append(f"launchd kept the agent loaded; unload it with: launchctl bootout {_target()}")
    remove_unit(agent)
    return outcome


def status() -> Status:
    agent = path()
    found = Status(MANAGER, agent, agent.exists())
    printed = _launchctl("print", _target())
    if printed.ok:
        fields = _fields(printed.out)
        found.state = fields.get("state", "loaded")
        found.active = found.state == "running"
        found.pid = int(fields["pid"]) if fields.get("pid", "").isdigit() else None
    elif "could not find service" in (printed.err + printed.out).lower():
        found.active, found.state = False, "not loaded"
    else:
        found.reason = f"launchctl could not be asked ({printed.reason})"
        found.hint = f"from your desktop session: launchctl print {_target()}"
    disabled = _launchctl("print-disabled", _domain())
    if disabled.ok:
        found.enabled = found.installed and not _is_disabled(disabled.out)
    return found


def _fields(printed: str) -> dict[str, str]:
    """`key = value` lines at the top level of `launchctl print` (one tab deep)."""
    fields: dict[str, str] = {}
    for line in printed.splitlines():
        if line.startswith("\t") and not line.startswith("\t\t") and " = " in line:
            key, value = line.strip().split(" = ", 1)
            fields.setdefault(key, value)
    return fields


def _is_disabled(listing: str) -> bool:
    for line in listing.splitlines():
        if f'"{LABEL}"' in line:
            return line.split("=>")[-1].strip() in ("disabled", "true")
    return False


def _domain() -> str:
    return f"gui/{os.getuid()}"


def _target() -> str:
    return f"{_domain()}/{LABEL}"


def _shell_word(where: Path) -> str:
    return shlex.quote(str(where))


def _launchctl(*args: str) -> Ran:
    return run("launchctl", *args)
