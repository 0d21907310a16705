"""`lmforge service install|status|uninstall` for real on Linux: the systemd user unit written into a temporary
XDG_CONFIG_HOME through the CLI, with the real systemctl and loginctl.

No user manager is reachable from the test's environment (an empty runtime directory, no session bus), so install
takes its documented path: the unit is written, linked for the next login where systemctl can do that without a
manager (systemd is not PID 1), and the user is told what to run once a session exists; exit status 0.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.services import CARRIED_ENV
from manager.config import ENV_OVERRIDES
from tests.support.instance import Instance, free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd user units are Linux's")

RUN_ONCE_THERE = "systemctl --user daemon-reload && systemctl --user enable --now lmforge.service"
# Where systemd is not PID 1, systemctl edits unit links itself; on a systemd host it needs the manager.
SYSTEMD_IS_INIT = Path("/run/systemd/system").is_dir()


def no_manager(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return dict(env, XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_RUNTIME_DIR=str(runtime),
                DBUS_SESSION_BUS_ADDRESS=f"unix:path={runtime}/no-bus")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "lm home 100%"  # a home the unit must quote, and whose % it must double
    return no_manager(dict(os.environ, LMFORGE_HOME=str(home), LMFORGE_PORT=str(free_port())), tmp_path)


def lmforge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def unit_file(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user" / "lmforge.service"


def wants_link(env: dict[str, str]) -> Path:
    return unit_file(env).parent / "default.target.wants" / "lmforge.service"


def lingering() -> bool:
    asked = subprocess.run(["loginctl", "show-user", getpass.getuser(), "--property=Linger", "--value"],
                           capture_output=True, text=True, timeout=30) if shutil.which("loginctl") else None
    return asked is not None and asked.returncode == 0 and asked.stdout.strip() == "yes"


def status_json(env: dict[str, str]) -> tuple[int, dict]:
    done = lmforge(env, "service", "status", "--json")
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_install_writes_the_unit_and_says_what_to_run_once_a_user_session_exists(env: dict[str, str]) -> None:
    done = lmforge(env, "service", "install")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"LMForge service installed (systemd --user): {unit_file(env)}")
    assert "no systemd user manager answered" in done.stderr and RUN_ONCE_THERE in done.stderr
    assert ("loginctl enable-linger" in done.stderr) is not lingering()
    lines = unit_file(env).read_text().splitlines()
    assert f"ExecStart={sys.executable} -m gateway.cli start --foreground" in lines
    home = env["LMFORGE_HOME"].replace("%", "%%")
    expected = [f'Environment="LMFORGE_HOME={home}"', f'Environment="LMFORGE_PORT={env["LMFORGE_PORT"]}"']
    expected += [f'Environment="{name}={env[name]}"' for name in CARRIED_ENV
                 if name != "LMFORGE_PORT" and env.get(name)]
    assert [line for line in lines if line.startswith("Environment=")] == expected
    assert wants_link(env).is_symlink() is not SYSTEMD_IS_INIT
    assert ("enabled for the next login" in done.stdout) is not SYSTEMD_IS_INIT


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_the_installed_unit_passes_systemd_analyze(env: dict[str, str]) -> None:
    assert lmforge(env, "service", "install").returncode == 0
    checked = subprocess.run(["systemd-analyze", "verify", "--user", str(unit_file(env))], env=env,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr


def test_install_again_is_unchanged_and_a_new_port_updates_it(env: dict[str, str]) -> None:
    assert lmforge(env, "service", "install").returncode == 0
    first = unit_file(env).read_bytes()
    again = lmforge(env, "service", "install")
    assert again.returncode == 0 and again.stdout.startswith("LMForge service unchanged"), again.stderr
    assert unit_file(env).read_bytes() == first
    moved = dict(env, LMFORGE_PORT=str(int(env["LMFORGE_PORT"]) + 1))
    updated = lmforge(moved, "service", "install")
    assert updated.returncode == 0 and updated.stdout.startswith("LMForge service updated"), updated.stderr
    assert f'Environment="LMFORGE_PORT={moved["LMFORGE_PORT"]}"' in unit_file(env).read_text().splitlines()


def test_status_says_installed_where_and_that_the_manager_cannot_be_asked(env: dict[str, str]) -> None:
    assert lmforge(env, "service", "install").returncode == 0
    code, found = status_json(env)
    assert code == 0
    assert found["installed"] is True and found["path"] == str(unit_file(env)) and found["manager"] == "systemd --user"
    assert found["active"] is None and found["reason"].startswith("no systemd user manager answered")
    assert "systemctl --user status lmforge.service" in found["hint"]
    assert found["enabled"] is (None if SYSTEMD_IS_INIT else True)
    assert found["running_outside_service"] is None
    shown = lmforge(env, "service", "status")
    assert shown.returncode == 0
    assert shown.stdout.splitlines()[:2] == ["LMForge service: installed (systemd --user)",
                                             f"  file:    {unit_file(env)}"]
    assert "  active:  unknown" in shown.stdout.splitlines()


def test_uninstall_removes_the_unit_and_again_is_a_clear_no_op(env: dict[str, str]) -> None:
    assert lmforge(env, "service", "install").returncode == 0
    removed = lmforge(env, "service", "uninstall")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"LMForge service removed (systemd --user): {unit_file(env)}")
    assert not unit_file(env).exists() and not wants_link(env).is_symlink()
    again = lmforge(env, "service", "uninstall")
    assert again.returncode == 0 and again.stderr == ""
    assert again.stdout.startswith("no LMForge service is installed")
    code, found = status_json(env)
    assert code == 1 and found["installed"] is False
    assert lmforge(env, "service", "status").stdout.startswith("LMForge service: not installed")


def test_install_beside_an_lmforge_started_by_hand_says_the_service_takes_over_after_stop(
    make_instance, tmp_path: Path
) -> None:
    inst: Instance = make_instance()
    env = no_manager(inst.env, tmp_path)
    try:
        started = inst.lmforge("start")
        assert started.returncode == 0, started.stderr
        pid = int((inst.home / "supervisord.pid").read_text())
        done = lmforge(env, "service", "install")
        assert done.returncode == 0, done.stderr
        assert f"started by `lmforge start` (supervisord pid {pid})" in done.stderr
        assert "takes over after `lmforge stop` and `systemctl --user start lmforge.service`" in done.stderr
        assert status_json(env)[1]["running_outside_service"] == pid
    finally:
        inst.lmforge("stop")


def test_without_systemctl_the_unit_is_written_and_install_says_nothing_will_start_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    bare = dict(env, PATH=str(tmp_path / "no-tools"))  # a Linux without systemd (nor logind)
    done = lmforge(bare, "service", "install")
    assert done.returncode == 0, done.stderr
    assert unit_file(env).is_file()
    assert done.stderr.splitlines() == ["warning: systemctl not found: this system does not run systemd, so nothing "
                                        "will start the unit; start LMForge with `lmforge start` from your login "
                                        "script instead"]
    code, found = status_json(bare)
    assert code == 0 and found["reason"].startswith("systemctl not found") and found["notes"] == []
    removed = lmforge(bare, "service", "uninstall")
    assert removed.returncode == 0 and removed.stderr == "" and not unit_file(env).exists()


# systemctl as a user manager that answers but refuses to enable the unit (a masked unit, say).
REFUSING_SYSTEMCTL = """#!/bin/sh
case "$2" in
  daemon-reload) exit 0 ;;
  enable) echo "Failed to enable unit: Unit file lmforge.service is masked." >&2; exit 1 ;;
  *) echo "Failed to connect to bus: No such file or directory" >&2; exit 1 ;;
esac
"""


def test_a_refused_enable_is_one_error_naming_the_unit_and_exit_status_1(env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "systemctl").write_text(REFUSING_SYSTEMCTL)
    (tools / "systemctl").chmod(0o755)
    done = lmforge(dict(env, PATH=str(tools)), "service", "install")
    assert done.returncode == 1 and done.stdout == ""  # no word of success
    assert done.stderr.splitlines() == [
        "error: `systemctl --user enable --now lmforge.service` failed: Failed to enable unit: Unit file "
        f"lmforge.service is masked.; the unit {unit_file(env)} is written but will not start at login: fix that, "
        "then run `lmforge service install` again"]
    assert unit_file(env).is_file()


def test_the_unit_carries_every_override_but_the_key_which_it_warns_belongs_in_config(env: dict[str, str]) -> None:
    key = "service-key-0123456789"
    env = dict(env, **{ENV_OVERRIDES["api_key"]: key, ENV_OVERRIDES["max_body_mb"]: "64",
                       ENV_OVERRIDES["mlx.python"]: sys.executable})
    done = lmforge(env, "service", "install")
    assert done.returncode == 0, done.stderr
    text = unit_file(env).read_text()
    assert key not in text and ENV_OVERRIDES["api_key"] not in text
    assert {'Environment="LMFORGE_MAX_BODY_MB=64"', f'Environment="LMFORGE_MLX_PYTHON={sys.executable}"'} <= \
        set(text.splitlines())
    assert (f"warning: {ENV_OVERRIDES['api_key']} is set, but the service will not have it: a unit file is readable "
            "by every user of this machine. It belongs in config.toml (mode 0600): lmforge config set api_key "
            f'"${ENV_OVERRIDES["api_key"]}"') in done.stderr.splitlines()
    assert key not in done.stdout + done.stderr
