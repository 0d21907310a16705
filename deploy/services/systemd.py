"""Linux: a systemd `--user` unit in $XDG_CONFIG_HOME/systemd/user, enabled into default.target (every login).

Without a user manager to talk to (containers, CI, `su` without a session) the unit is still written, and the
user is told what to run once there is one.
"""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path

from deploy.services import Outcome, Ran, Status, Unit, UnitError, remove_unit, run, write_unit

NAME = "lmforge.service"
MANAGER = "systemd --user"
# supervisord stops the four programs in reverse order, each within its stopwaitsecs (gateway 15, prober and
# downloader 10, manager 30 while it stops its engines): 55 s at most, then KillMode=mixed kills what is left.
STOP_TIMEOUT_S = 90
# Words that need no quoting in ExecStart; anything else is quoted and escaped.
PLAIN_WORD = re.compile(r"[A-Za-z0-9/._+:=@,-]+")
RUN_ONCE_THERE = f"systemctl --user daemon-reload && systemctl --user enable --now {NAME}"


def path() -> Path:
    # The XDG spec: an unset, empty or relative XDG_CONFIG_HOME means ~/.config.
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "systemd" / "user" / NAME


def start_command() -> str:
    return f"systemctl --user start {NAME}"


def render(unit: Unit) -> str:
    lines = [
        "# LMForge at login, written by `lmforge service install` (the next install rewrites it).",
        f"# Its output: journalctl --user -u {NAME}; LMForge's own logs: {_comment(unit.logs)}",
        "[Unit]",
        "Description=LMForge, local LLMs behind one API",
        # A start that keeps failing (a broken config.toml) is given up after 5 tries, not retried forever.
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join([_executable(unit.argv[0]), *(_argument(word) for word in unit.argv[1:])]),
        *(f"Environment={_quoted(f'{name}={value}')}" for name, value in unit.environment.items()),
        "Restart=on-failure",
        "RestartSec=5",
        # SIGTERM to supervisord alone, which stops the programs in order; whatever outlives it is then killed.
        "KillMode=mixed",
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        "NoNewPrivileges=yes",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    return "\n".join(lines) + "\n"


def _check(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise UnitError(f"a systemd unit cannot hold a control character (in {value!r})")
    return value


def _quoted(value: str) -> str:
    """A double-quoted value: systemd unescapes C-style (`\\\\`, `\\"`) and expands specifiers (`%%` is `%`)."""
    escaped = _check(value).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def _executable(word: str) -> str:
    """ExecStart's program: systemd expands no variable there, and refuses a path with a quote or a backslash."""
    if any(ch in word for ch in "\\\"'"):
        raise UnitError(f"systemd cannot start a program whose path holds a quote or a backslash ({word!r}); "
                        "install LMForge's Python at another path")
    return word if PLAIN_WORD.fullmatch(word) else _quoted(word)


def _argument(word: str) -> str:
    """One of ExecStart's arguments, where `$` also starts a variable (`$$` is `$`)."""
    return word if PLAIN_WORD.fullmatch(word) else _quoted(word).replace("$", "$$")


def _comment(where: Path) -> str:
    return " ".join(str(where).split())  # a comment is one line whatever the path holds


def install(unit: Unit) -> Outcome:
    text = render(unit)
    before, _ = _show()
    outcome = Outcome(path(), write_unit(path(), text.encode()))
    reload = _systemctl("daemon-reload")
    if reload.ok:
        enable = _systemctl("enable", "--now", NAME)
        if not enable.ok:
            outcome.error = f"`systemctl --user enable --now {NAME}` failed: {enable.reason}"
            return outcome
        outcome.done.append(f"enabled and started: it starts at every login (systemctl --user enable --now {NAME})")
        if outcome.action == "updated" and before.get("ActiveState") == "active":
            outcome.warnings.append(f"the running service keeps its old unit until `systemctl --user restart {NAME}` "
                                    "(which restarts LMForge and unloads its models)")
    else:
        # Where systemd is not PID 1, systemctl still links the unit into default.target.wants by itself.
        linked = _systemctl("enable", NAME)
        if linked.ok:
            outcome.done.append("enabled for the next login (linked into default.target.wants)")
        outcome.warnings.append(_unreachable(reload, f"the unit is written but not started; once you are logged in "
                                                     f"to a session with one, run: {RUN_ONCE_THERE}"))
    linger = _linger_warning(unit.user)
    if linger:
        outcome.warnings.append(linger)
    return outcome


def uninstall() -> Outcome:
    unit_path, link = path(), _wants_link()
    if not unit_path.exists() and not link.is_symlink():
        return Outcome(unit_path, "absent")
    outcome = Outcome(unit_path, "removed")
    stopped = _systemctl("disable", "--now", NAME)
    if stopped.ok:
        outcome.done.append("stopped and disabled")
    elif link.is_symlink():
        _systemctl("disable", NAME)  # no manager: where systemd is not PID 1, systemctl unlinks it by itself
        link.unlink(missing_ok=True)  # what `enable` linked, when systemctl could not unlink it either
        outcome.done.append("disabled (unlinked from default.target.wants)")
    remove_unit(unit_path)
    reload = _systemctl("daemon-reload")
    if not stopped.ok and not reload.ok and not reload.missing:
        outcome.warnings.append(f"no systemd user manager answered ({reload.reason}): if the service runs in a "
                                f"session of yours, stop it there: systemctl --user stop {NAME} && "
                                "systemctl --user daemon-reload")
    return outcome


def status() -> Status:
    unit_path = path()
    found = Status(MANAGER, unit_path, unit_path.exists())
    props, shown = _show()
    if props:
        found.enabled = props.get("UnitFileState", "") in ("enabled", "enabled-runtime")
        found.active = props.get("ActiveState") == "active"
        found.state = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"
        main_pid = props.get("MainPID", "")
        found.pid = int(main_pid) if main_pid.isdigit() and int(main_pid) > 0 else None
    elif shown.missing:
        found.reason = "systemctl not found: this system does not run systemd"
        found.hint = "start LMForge with `lmforge start` from your login script instead"
    else:
        found.reason = f"no systemd user manager answered ({shown.reason})"
        found.hint = f"in a session with a user manager: systemctl --user status {NAME}"
        offline = _systemctl("is-enabled", NAME)  # reads the unit files: needs no manager where systemd is not PID 1
        if offline.out.strip():
            found.enabled = offline.out.strip() in ("enabled", "enabled-runtime")
    if found.installed:
        linger = _linger_warning(getpass.getuser())
        if linger:
            found.notes.append(linger)
    return found


def _show() -> tuple[dict[str, str], Ran]:
    """The unit's properties from the user manager (none when no manager answers), and its answer."""
    shown = _systemctl("show", NAME, "--property=LoadState,UnitFileState,ActiveState,SubState,MainPID")
    if not shown.ok:
        return {}, shown
    return dict(line.split("=", 1) for line in shown.out.splitlines() if "=" in line), shown


def _wants_link() -> Path:
    return path().parent / "default.target.wants" / NAME


def _systemctl(*args: str) -> Ran:
    return run("systemctl", "--user", *args)


def _unreachable(ran: Ran, what_then: str) -> str:
    if ran.missing:
        return ("systemctl not found: this system does not run systemd, so nothing will start the unit; "
                "start LMForge with `lmforge start` from your login script instead")
    return f"no systemd user manager answered ({ran.reason}): {what_then}"


def _linger_warning(user: str) -> str:
    """Without lingering, a user's services run only while they are logged in."""
    asked = run("loginctl", "show-user", user, "--property=Linger", "--value")
    if asked.ok and asked.out.strip() == "yes" or asked.missing:
        return ""  # lingering on, or no logind to ask (nor a systemd to run the unit)
    why = f"lingering is off for {user}" if asked.ok else f"could not ask loginctl whether {user} lingers " \
                                                         f"({asked.reason})"
    return (f"{why}: the service runs only while you are logged in; `loginctl enable-linger {user}` keeps it "
            "running after logout and starts it at boot")
