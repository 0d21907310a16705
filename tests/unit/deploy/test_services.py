"""The per-user service units (systemd, launchd, Task Scheduler): what they run, how they restart, the environment
they carry, that none needs root, and values escaped for each format (a home with a space and a percent sign)."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from deploy import services
from deploy.services import Unit, UnitError, launchd, systemd, windows
from manager.config import ENV_OVERRIDES

ARGS = ("-m", "gateway.cli", "start", "--foreground")
# A home that every format must escape: a space, a percent sign (a systemd specifier, a Task Scheduler variable),
# a dollar (a systemd variable), and XML's own characters.
ODD_HOME = "/home/jo doe/100%h $HOME & <lm>"
TASK = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"


def unit(home: str = ODD_HOME, interpreter: str = sys.executable, **env: str) -> Unit:
    return Unit(argv=(interpreter, *ARGS), environment={"LMFORGE_HOME": home, **env}, user="jo",
                logs=Path(home) / "logs")


# --- systemd ---


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_systemd_unit_runs_start_foreground_restarts_on_failure_and_starts_at_login() -> None:
    text = systemd.render(unit(home="/home/jo/.lmforge", interpreter="/usr/bin/python3"))
    assert "ExecStart=/usr/bin/python3 -m gateway.cli start --foreground" in lines(text)
    assert {"Restart=on-failure", "RestartSec=5", "Type=simple", "WantedBy=default.target"} <= set(lines(text))
    assert 'Environment="LMFORGE_HOME=/home/jo/.lmforge"' in lines(text)


def test_systemd_unit_is_a_user_unit_without_root() -> None:
    text = systemd.render(unit(LMFORGE_PORT="11555"))
    assert not any(line.startswith(("User=", "Group=", "PermissionsStartOnly", "AmbientCapabilities"))
                   for line in lines(text))
    assert "NoNewPrivileges=yes" in lines(text)
    assert 'Environment="LMFORGE_PORT=11555"' in lines(text)


def test_systemd_unit_doubles_percent_signs_and_quotes_a_home_with_a_space() -> None:
    text = systemd.render(unit())
    assert 'Environment="LMFORGE_HOME=/home/jo doe/100%%h $HOME & <lm>"' in lines(text)  # `$` is plain there


def test_systemd_exec_start_quotes_the_program_and_escapes_its_arguments() -> None:
    text = systemd.render(unit(interpreter="/opt/a b/100%x/$y/python"))
    assert 'ExecStart="/opt/a b/100%%x/$y/python" -m gateway.cli start --foreground' in lines(text)  # no $ there
    odd = Unit(argv=("/usr/bin/python3", "-c", 'a $b "c" \\d 100%'), environment={}, user="jo", logs=Path("/l"))
    assert r'ExecStart=/usr/bin/python3 -c "a $$b \"c\" \\d 100%%"' in lines(systemd.render(odd))


def test_systemd_refuses_a_program_path_with_a_quote() -> None:
    with pytest.raises(UnitError, match="quote or a backslash"):
        systemd.render(unit(interpreter='/opt/"py"/python'))


def test_systemd_refuses_a_newline_in_a_value() -> None:
    with pytest.raises(UnitError, match="control character"):
        systemd.render(unit(home="/home/jo\nExecStartPre=/bin/sh"))


def test_systemd_unit_path_follows_xdg_config_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert systemd.path() == tmp_path / "systemd" / "user" / "lmforge.service"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # ignored, as the XDG spec says
    assert systemd.path() == Path.home() / ".config" / "systemd" / "user" / "lmforge.service"


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")


def verify(text: str, where: Path) -> subprocess.CompletedProcess:
    """systemd's own check of a user unit (it also checks that ExecStart's program exists)."""
    unit_file = where / "lmforge.service"
    unit_file.write_text(text)
    runtime = where / "runtime"  # the user manager's runtime directory, which verify --user looks up
    runtime.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--user", str(unit_file)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))


@needs_systemd_analyze
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    checked = verify(systemd.render(unit(LMFORGE_PORT="11555")), tmp_path)
    assert checked.returncode == 0 and checked.stderr == "" and checked.stdout == "", checked.stderr


@needs_systemd_analyze
def test_systemd_analyze_finds_an_interpreter_whose_path_needs_escaping(tmp_path: Path) -> None:
    odd = tmp_path / "py thon 100%b $x"
    odd.mkdir()
    (odd / "python").symlink_to(sys.executable)
    checked = verify(systemd.render(unit(interpreter=str(odd / "python"))), tmp_path)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    # The control: written without escaping, systemd reads another path, which does not exist.
    naive = systemd.render(unit(interpreter="/bin/true")).replace("ExecStart=/bin/true", f'ExecStart="{odd}/python"')
    refused = verify(naive, tmp_path)
    assert refused.returncode != 0 and "is not executable" in refused.stderr


# --- launchd ---


def test_launchd_agent_runs_start_foreground_at_load_and_again_after_a_failure() -> None:
    agent = plistlib.loads(launchd.render(unit()))
    assert agent["Label"] == launchd.LABEL
    assert agent["ProgramArguments"] == [sys.executable, *ARGS]
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}  # not after `lmforge stop`
    assert agent["ExitTimeOut"] >= 60  # supervisord's ordered stop takes up to 55 s


def test_launchd_agent_carries_the_environment_exactly_and_runs_as_the_user() -> None:
    raw = launchd.render(unit(LMFORGE_PORT="11555"))
    agent = plistlib.loads(raw)
    assert agent["EnvironmentVariables"]["LMFORGE_HOME"] == ODD_HOME
    assert agent["EnvironmentVariables"]["LMFORGE_PORT"] == "11555"
    assert "/opt/homebrew/bin" in agent["EnvironmentVariables"]["PATH"].split(":")
    assert agent["StandardErrorPath"] == f"{ODD_HOME}/logs/service.log"
    assert b"&amp; &lt;lm&gt;" in raw  # escaped in the XML, whole again once parsed
    assert not {"UserName", "GroupName", "InitGroups", "RootDirectory"} & agent.keys()


def test_launchd_refuses_a_control_character() -> None:
    with pytest.raises(UnitError, match="launchd"):
        launchd.render(unit(home="/Users/jo\x07"))


# --- Windows Task Scheduler ---


def task(u: Unit) -> ET.Element:
    raw = windows.render(u)
    assert raw.startswith(b"\xff\xfe")  # UTF-16 with its byte order mark, as the declaration says
    return ET.fromstring(raw)


def test_windows_task_starts_at_the_users_logon_with_least_privilege() -> None:
    root = task(unit())
    assert root.tag == f"{TASK}Task"
    trigger = root.find(f"{TASK}Triggers/{TASK}LogonTrigger")
    assert trigger is not None and trigger.findtext(f"{TASK}UserId") == "jo"
    principal = root.find(f"{TASK}Principals/{TASK}Principal")
    assert principal is not None
    assert principal.findtext(f"{TASK}RunLevel") == "LeastPrivilege"
    assert principal.findtext(f"{TASK}LogonType") == "InteractiveToken"  # no stored password


def test_windows_task_restarts_on_failure_and_is_never_stopped_by_a_time_limit() -> None:
    settings = task(unit()).find(f"{TASK}Settings")
    assert settings is not None
    assert settings.findtext(f"{TASK}RestartOnFailure/{TASK}Interval") == "PT1M"
    assert int(settings.findtext(f"{TASK}RestartOnFailure/{TASK}Count") or 0) > 0
    assert settings.findtext(f"{TASK}ExecutionTimeLimit") == "PT0S"
    assert settings.findtext(f"{TASK}DisallowStartIfOnBatteries") == "false"
    assert settings.findtext(f"{TASK}MultipleInstancesPolicy") == "IgnoreNew"


def command_line(root: ET.Element) -> tuple[str, str]:
    exec_ = root.find(f"{TASK}Actions/{TASK}Exec")
    assert exec_ is not None
    return exec_.findtext(f"{TASK}Command") or "", exec_.findtext(f"{TASK}Arguments") or ""


def test_windows_task_line_has_no_percent_sign_or_inner_quote_and_is_windows_quoted() -> None:
    command, arguments = command_line(task(unit()))
    assert command == sys.executable
    assert "%" not in arguments  # Task Scheduler would expand %...%
    assert arguments.startswith('-c "') and arguments.endswith('"') and '"' not in arguments[4:-1]
    assert arguments == subprocess.list2cmdline(["-c", arguments[4:-1]])


def test_windows_task_line_sets_the_environment_and_runs_the_module_with_its_arguments(tmp_path: Path) -> None:
    """The -c line run for real, with a stand-in module that reports what it got."""
    (tmp_path / "report_start.py").write_text(
        "import json, os, sys\n"
        "print(json.dumps({'home': os.environ['LMFORGE_HOME'], 'port': os.environ.get('LMFORGE_PORT'), "
        "'args': sys.argv[1:], 'main': __name__}))\n")
    u = Unit(argv=(sys.executable, "-m", "report_start", "start", "--foreground"),
             environment={"LMFORGE_HOME": ODD_HOME + " 'quoted' \\x", "LMFORGE_PORT": "11555"}, user="jo",
             logs=Path(ODD_HOME))
    _, arguments = command_line(task(u))
    ran = subprocess.run([sys.executable, "-c", arguments[4:-1]], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {"home": ODD_HOME + " 'quoted' \\x", "port": "11555",
                                      "args": ["start", "--foreground"], "main": "__main__"}


def test_windows_task_xml_escapes_markup_in_values() -> None:
    raw = windows.render(unit(home="C:\\Users\\jo & <co>"))
    assert "&amp; &lt;co&gt;" in raw.decode("utf-16")
    assert "C:\\\\Users\\\\jo & <co>" in command_line(ET.fromstring(raw))[1]  # whole once parsed


def test_windows_refuses_a_percent_sign_in_the_interpreters_path() -> None:
    with pytest.raises(UnitError, match="percent"):
        windows.render(unit(interpreter="C:\\100%PY%\\python.exe"))


# --- the platform pick and the common parts ---


@pytest.mark.parametrize(("platform", "module"), [("linux", systemd), ("darwin", launchd), ("win32", windows)])
def test_each_platform_gets_its_service_manager(platform: str, module: object) -> None:
    assert services.backend(platform) is module


def test_an_unknown_platform_is_refused_with_what_to_do_instead() -> None:
    with pytest.raises(services.UnsupportedPlatform, match="lmforge start"):
        services.backend("sunos5")


def test_the_unit_carries_home_and_port_only_when_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_OVERRIDES.values():
        monkeypatch.delenv(name, raising=False)
    assert services.unit_for(tmp_path, tmp_path / "logs").environment == {"LMFORGE_HOME": str(tmp_path)}
    assert services.left_out() == {}
    monkeypatch.setenv("LMFORGE_PORT", "11555")
    made = services.unit_for(tmp_path, tmp_path / "logs")
    assert made.environment["LMFORGE_PORT"] == "11555"
    assert made.argv == (sys.executable, *ARGS)


def test_the_unit_carries_every_override_lmforge_reads_but_the_key(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    values = {name: f"/value/of/{name}" for name in ENV_OVERRIDES.values()}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    key = ENV_OVERRIDES["api_key"]
    carried = services.unit_for(tmp_path, tmp_path / "logs").environment
    assert carried == {"LMFORGE_HOME": str(tmp_path), **{n: v for n, v in values.items() if n != key}}
    assert {"LMFORGE_MLX_PYTHON", "LMFORGE_MAX_BODY_MB"} <= set(carried)  # not only the port and llama-server
    assert services.left_out() == {key: "api_key"}  # said to the user instead, with the key to set


def test_writing_a_unit_says_created_unchanged_or_updated(tmp_path: Path) -> None:
    target = tmp_path / "a" / "unit"
    assert services.write_unit(target, b"one") == "created"
    assert services.write_unit(target, b"one") == "unchanged"
    assert services.write_unit(target, b"two") == "updated"
    assert target.read_bytes() == b"two" and sorted(p.name for p in target.parent.iterdir()) == ["unit"]
