"""What `lmforge config set` makes of VALUE and echoes of it (secrets never), and how `lmforge config get` prints
the settings."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from gateway.cli.commands.config import as_toml, parse_value, set_command, shown
from gateway.cli.context import Context
from gateway.cli.terminal import Terminal
from manager import config_file
from manager.config import Paths, Settings
from tests.support.instance import free_port


@pytest.mark.parametrize(("key", "raw", "value"), [
    ("llama_cpp.ctx_size", "4096", 4096), ("allow_unauthenticated", "true", True), ("keep_alive", '"5m"', "5m"),
    ("keep_alive", "5m", "5m"), ("keep_alive", "300", 300), ("trusted_networks", '["10.0.0.0/8"]', ["10.0.0.0/8"]),
    ("host", "0.0.0.0", "0.0.0.0"), ("api_key", "12345678", "12345678"), ("tls_cert", "2024-01-01", "2024-01-01"),
    ("api_keys", '[{key = "k" , scope = "admin"}]', [{"key": "k", "scope": "admin"}]),
])
def test_a_value_is_toml_else_plain_text_and_text_settings_take_it_as_typed(key: str, raw: str, value: object) -> None:
    assert parse_value(key, raw) == value


def test_every_setting_prints_as_toml_with_overrides_and_pending_restarts_noted(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_PORT", "12000")
    (tmp_path / "config.toml").write_text('api_key = "admin-key-0123456789"\n[[api_keys]]\nkey = "k-0123456789"\n')
    view = config_file.describe(Paths(tmp_path))
    view["restart_required"] = ["llama_cpp.ctx_size"]
    text = as_toml(view)
    parsed = tomllib.loads(text)  # what it prints is TOML
    assert parsed["port"] == 12000 and parsed["api_key"] == "***" and parsed["api_keys"] == [
        {"key": "***", "scope": "inference", "name": ""}]
    assert "port = 12000 # from LMFORGE_PORT" in text and "admin-key" not in text
    assert "ctx_size = 8192 # changed in config.toml: applies after a restart" in text
    assert "# gpu_layers: not set" in text


REMOTE_KEY = "sk-remote-0123456789"


@pytest.mark.parametrize(("key", "raw", "echo"), [
    ("remote", f'[{{name = "box", url = "http://10.0.0.5:30000", api_key = "{REMOTE_KEY}"}}]',
     '[{name = "box", url = "http://10.0.0.5:30000", api_key = "***"}]'),
    ("api_key", "admin-key-0123456789", '"***"'),
    ("api_keys", '[{key = "k-0123456789", scope = "admin"}]', '[{key = "***", scope = "admin"}]'),
    ("llama_cpp.ctx_size", "4096", "4096"), ("keep_alive", "5m", '"5m"'),
])
def test_set_echoes_the_value_with_every_secret_redacted_and_no_default_added(key: str, raw: str, echo: str) -> None:
    assert shown(key, parse_value(key, raw)) == echo


def test_set_of_a_remote_with_a_key_writes_the_key_but_never_prints_it(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ctx = Context(Terminal(), Settings(port=free_port()), Paths(tmp_path))  # nothing listens: the file is written
    value = f'[{{name = "box", url = "http://10.0.0.5:30000", api_key = "{REMOTE_KEY}"}}]'
    assert set_command(argparse.Namespace(key="remote", value=value), ctx) == 0
    printed = capsys.readouterr()
    assert REMOTE_KEY not in printed.out + printed.err
    assert f'set remote = [{{name = "box", url = "http://10.0.0.5:30000", api_key = "***"}}] in {ctx.paths.config}' \
        in printed.out.splitlines()
    assert tomllib.loads(ctx.paths.config.read_text())["remote"][0]["api_key"] == REMOTE_KEY
