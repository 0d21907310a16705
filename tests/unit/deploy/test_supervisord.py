"""The rendered supervisord config: four programs in the right order, one instance per home."""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import pytest

from deploy.supervisord import render
from manager.config import Paths, Settings


def parsed(home: Path, settings: Settings | None = None) -> configparser.ConfigParser:
    cp = configparser.ConfigParser()  # supervisord's own reader interpolates %(...)s
    cp.read_string(render(Paths(home), settings or Settings()))
    return cp


def test_four_programs_manager_first_gateway_last(tmp_path: Path) -> None:
    cp = parsed(tmp_path)
    priorities = {s.split(":")[1]: int(cp[s]["priority"]) for s in cp.sections() if s.startswith("program:")}
    assert priorities == {"manager": 10, "prober": 20, "downloader": 20, "gateway": 30}
    assert cp["program:manager"]["command"] == f"{sys.executable} -m manager"
    assert int(cp["program:manager"]["stopwaitsecs"]) >= 30


def test_each_home_gets_its_own_socket_pidfile_and_logs(tmp_path: Path) -> None:
    a, b = parsed(tmp_path / "a"), parsed(tmp_path / "b")
    for key, section in (("file", "unix_http_server"), ("pidfile", "supervisord"), ("logfile", "supervisord")):
        assert a[section][key] != b[section][key]
    assert f'LMFORGE_HOME="{tmp_path / "a"}"' in a["program:gateway"]["environment"]


def test_percent_signs_in_paths_survive_interpolation(tmp_path: Path) -> None:
    home = tmp_path / "100%home"
    assert parsed(home)["supervisord"]["directory"] == str(home)


def test_port_override_travels_to_the_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_PORT", "12001")
    assert 'LMFORGE_PORT="12001"' in parsed(tmp_path)["program:gateway"]["environment"]


def test_every_log_rotates_with_the_configured_size_and_count(tmp_path: Path) -> None:
    cp = parsed(tmp_path, Settings(log_max_mb=7, log_backups=4))
    programs = [s for s in cp.sections() if s.startswith("program:")]
    assert len(programs) == 4
    for section in programs:
        assert (cp[section]["stdout_logfile_maxbytes"], cp[section]["stdout_logfile_backups"]) == ("7MB", "4")
    assert (cp["supervisord"]["logfile_maxbytes"], cp["supervisord"]["logfile_backups"]) == ("7MB", "4")


def test_the_rendered_config_is_one_supervisord_accepts(tmp_path: Path) -> None:
    from supervisor.options import ServerOptions

    (tmp_path / "logs").mkdir()
    conf = tmp_path / "supervisord.conf"
    conf.write_text(render(Paths(tmp_path), Settings(log_max_mb=1, log_backups=0)))
    options = ServerOptions()
    options.realize(args=["-c", str(conf)])
    logs = {p.name: (p.stdout_logfile_maxbytes, p.stdout_logfile_backups)
            for group in options.process_group_configs for p in group.process_configs}
    assert logs == {name: (1024**2, 0) for name in ("manager", "prober", "downloader", "gateway")}
