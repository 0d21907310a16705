"""`lmforge engine list`: a broken engine (a configured program that is not there) shows why and its fix, never an
install command, which would fail the same way."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from gateway.cli.commands.engine import list_command
from gateway.cli.context import Context
from gateway.cli.terminal import Terminal
from manager.config import ENV_OVERRIDES, load_settings

VARIABLE = ENV_OVERRIDES["llama_cpp.server"]


def listed(home: Path, capsys: pytest.CaptureFixture[str], *, as_json: bool) -> str:
    settings, paths = load_settings(home)
    assert list_command(argparse.Namespace(json=as_json), Context(Terminal(), settings, paths)) == 0
    return capsys.readouterr().out


def test_a_missing_configured_llama_server_is_listed_with_its_reason_and_fix_not_an_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "gone" / "llama-server"
    monkeypatch.setenv(VARIABLE, str(missing))
    rows = {row["engine"]: row for row in json.loads(listed(tmp_path / "home", capsys, as_json=True))}
    llama = rows["llama.cpp"]
    assert (llama["status"], llama["install"], llama["fix"]) == ("broken", None, f"unset {VARIABLE}")
    assert str(missing) in llama["detail"] and "does not exist" in llama["detail"]
    [line] = [line for line in listed(tmp_path / "home", capsys, as_json=False).splitlines()
              if line.split()[:1] == ["llama.cpp"]]
    assert line.rstrip().endswith(f"broken: {llama['detail']}; fix: unset {VARIABLE}")
    assert "lmforge engine install llama.cpp" not in line


def test_an_engine_not_installed_is_listed_with_its_install_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    lines = listed(tmp_path / "home", capsys, as_json=False).splitlines()
    [line] = [line for line in lines if line.split()[:1] == ["llama.cpp"]]
    assert line.rstrip().endswith("not installed: lmforge engine install llama.cpp")
