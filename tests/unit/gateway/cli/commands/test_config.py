"""What `lmforge config set` makes of VALUE, and how `lmforge config get` prints the settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.cli.commands.config import as_toml, parse_value
from manager import config_file
from manager.config import Paths


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
