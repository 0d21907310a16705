"""The rendered supervisord config: four programs in the right order, one instance per home."""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import pytest

from deploy.supervisord import render
from manager.config import Paths


def parsed(home: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser()  # supervisord's own reader interpolates %(...)s
    cp.read_string(render(Paths(home)))
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
