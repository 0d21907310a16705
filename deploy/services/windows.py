"""Windows: a Scheduled Task that starts at the current user's logon, in their session, with least privilege.

Its XML is kept in %LOCALAPPDATA%\\lmforge and registered with `schtasks /Create /XML`. Task Scheduler has no
environment for a task and expands %VARIABLES% in its command line, so LMForge's environment travels inside a
`python -c` line written without `%` or `"`.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

from deploy.services import Outcome, Ran, Status, Unit, UnitError, remove_unit, run, write_unit

TASK = "LMForge"
MANAGER = "Task Scheduler"
NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task"
# Characters written as \x escapes in the -c line: `%` (expanded by Task Scheduler, with no escape of its own),
# `"` (ends the argument) and the literal's own quote. A backslash is doubled: Windows' argument rules keep
# backslashes as they are unless a `"` follows, and none does.
ESCAPED = {"%", '"', "'"}


def path() -> Path:
    local = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    return Path(local) / "lmforge" / f"{TASK}-task.xml"


def start_command() -> str:
    return f"schtasks /Run /TN {TASK}"


def render(unit: Unit) -> bytes:
    """The task's XML, in UTF-16 with its byte order mark, as schtasks reads it whatever the code page."""
    command, arguments = _action(unit)
    task = ET.Element("Task", {"version": "1.2", "xmlns": NAMESPACE})
    info = _sub(task, "RegistrationInfo")
    _sub(info, "Author", unit.user)
    _sub(info, "Description", "LMForge, local LLMs behind one API: `lmforge start --foreground` at logon "
                              "(written by `lmforge service install`)")
    _sub(info, "URI", f"\\{TASK}")
    logon = _sub(_sub(task, "Triggers"), "LogonTrigger")
    _sub(logon, "Enabled", "true")
    _sub(logon, "UserId", unit.user)  # this user's logon only: a trigger for anyone's would need an administrator
    principal = _sub(_sub(task, "Principals"), "Principal", id="Author")
    _sub(principal, "UserId", unit.user)
    _sub(principal, "LogonType", "InteractiveToken")  # in the user's session, no stored password
    _sub(principal, "RunLevel", "LeastPrivilege")
    settings = _sub(task, "Settings")
    for name, value in (("MultipleInstancesPolicy", "IgnoreNew"), ("DisallowStartIfOnBatteries", "false"),
                        ("StopIfGoingOnBatteries", "false"), ("AllowHardTerminate", "true"),
                        ("StartWhenAvailable", "false"), ("RunOnlyIfNetworkAvailable", "false")):
        _sub(settings, name, value)
    idle = _sub(settings, "IdleSettings")
    _sub(idle, "StopOnIdleEnd", "false")
    _sub(idle, "RestartOnIdle", "false")
    for name, value in (("AllowStartOnDemand", "true"), ("Enabled", "true"), ("Hidden", "false"),
                        ("RunOnlyIfIdle", "false"), ("WakeToRun", "false"),
                        ("ExecutionTimeLimit", "PT0S"),  # no limit: the default (72 hours) would stop LMForge
                        ("Priority", "5")):  # normal; the default, 7, runs below normal
        _sub(settings, name, value)
    restart = _sub(settings, "RestartOnFailure")
    _sub(restart, "Interval", "PT1M")  # the shortest Task Scheduler allows
    _sub(restart, "Count", "999")
    action = _sub(_sub(task, "Actions", Context="Author"), "Exec")
    _sub(action, "Command", command)
    _sub(action, "Arguments", arguments)
    ET.indent(task)
    text = '<?xml version="1.0" encoding="UTF-16"?>\n' + ET.tostring(task, encoding="unicode") + "\n"
    return text.encode("utf-16")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        if any(ord(ch) < 32 for ch in text):
            raise UnitError(f"a task's XML cannot hold a control character (in <{tag}>: {text!r})")
        element.text = text  # ElementTree escapes &, < and >
    return element


def _action(unit: Unit) -> tuple[str, str]:
    """The interpreter, and `-c "<line>"`: the environment set, then the module run as `python -m` would."""
    interpreter, flag, module, *args = unit.argv
    if flag != "-m":
        raise UnitError(f"a task runs `python -m MODULE`, not {' '.join(unit.argv)!r}")
    if "%" in interpreter:
        raise UnitError(f"Task Scheduler would expand the %...% in {interpreter!r}; install Python at a path "
                        "without a percent sign")
    env = "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in unit.environment.items()) + "}"
    argv = "[" + ", ".join(_literal(a) for a in ("lmforge", *args)) + "]"
    line = (f"import os, runpy, sys; os.environ.update({env}); sys.argv = {argv}; "
            f"runpy.run_module({_literal(module)}, run_name='__main__', alter_sys=True)")
    # No `"` inside and no backslash before the closing quote: Windows' argument rules keep the line whole.
    return interpreter, subprocess.list2cmdline(["-c", line])


def _literal(value: str) -> str:
    """A Python string literal without `%`, `"` or a backslash other than its own escapes."""
    return "'" + "".join(_char(ch) for ch in value) + "'"


def _char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch not in ESCAPED and ch.isprintable():
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _windowless(unit: Unit) -> Unit:
    """pythonw.exe beside python.exe, when there is one: no console window at every logon."""
    interpreter = Path(unit.argv[0])
    quiet = interpreter.with_name("pythonw.exe")
    if interpreter.name.lower() == "python.exe" and quiet.exists():
        return replace(unit, argv=(str(quiet), *unit.argv[1:]))
    return unit


def _account(user: str) -> str:
    domain = os.environ.get("USERDOMAIN")
    return f"{domain}\\{user}" if domain and "\\" not in user else user


def install(unit: Unit) -> Outcome:
    unit = replace(_windowless(unit), user=_account(unit.user))
    outcome = Outcome(path(), write_unit(path(), render(unit)))
    created = _schtasks("/Create", "/TN", TASK, "/XML", str(path()), "/F")
    if not created.ok:
        outcome.error = f"schtasks /Create failed: {created.reason}"
        return outcome
    outcome.done.append(f"registered as the scheduled task {TASK}: it starts at every logon")
    # A second instance is ignored (MultipleInstancesPolicy), and LMForge's own start is a no-op when it runs.
    started = _schtasks("/Run", "/TN", TASK)
    if started.ok:
        outcome.done.append("started")
    else:
        outcome.warnings.append(f"the task did not start now ({started.reason}); it starts at your next logon, "
                                f"or run: {start_command()}")
    return outcome


def uninstall() -> Outcome:
    xml = path()
    registered = _schtasks("/Query", "/TN", TASK).ok
    if not registered and not xml.exists():
        return Outcome(xml, "absent")
    outcome = Outcome(xml, "removed")
    if registered:
        _schtasks("/End", "/TN", TASK)  # deleting a task leaves its running instance: stop it first
        deleted = _schtasks("/Delete", "/TN", TASK, "/F")
        if deleted.ok:
            outcome.done.append("stopped and deleted the scheduled task")
        else:
            outcome.error = f"schtasks /Delete failed: {deleted.reason}"
    remove_unit(xml)
    return outcome


def status() -> Status:
    xml = path()
    found = Status(MANAGER, xml, xml.exists())
    queried = _schtasks("/Query", "/TN", TASK)
    if queried.code is None:
        found.reason = f"Task Scheduler could not be asked ({queried.reason})"
        found.hint = f"schtasks /Query /TN {TASK} /V /FO LIST"
        return found
    if not queried.ok:
        found.enabled, found.active, found.state = False, False, "not registered"
        return found
    # The state's name from PowerShell is the same in every language, unlike schtasks' listing.
    state = run("powershell", "-NoProfile", "-NonInteractive", "-Command",
                f"(Get-ScheduledTask -TaskName '{TASK}').State")
    if state.ok and state.out.strip():
        found.state = state.out.strip()
        found.enabled, found.active = found.state != "Disabled", found.state == "Running"
    else:
        found.reason = f"PowerShell could not tell the task's state ({state.reason})"
        found.hint = f"schtasks /Query /TN {TASK} /V /FO LIST"
    return found


def _schtasks(*args: str) -> Ran:
    return run("schtasks", *args)
