"""config.toml changed while LMForge runs: merged, checked whole, redacted, written atomically, comments kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from manager import config_file
from manager.config import ConfigError, Paths, Settings, decode_settings
from manager.config_keys import Guard

COMMENTED = """\
# my LMForge
port = 11431  # not the default: another instance runs on 11430

# keys for the LAN
[[api_keys]]
key = "webui-key-0123456789"
scope = "inference"
name = "webui"

[llama_cpp]
# small machine
ctx_size = 2048
"""


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    for var in ("LMFORGE_PORT", "LMFORGE_API_KEY", "LMFORGE_MAX_BODY_MB", "LMFORGE_LLAMA_SERVER"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "config.toml").write_text(COMMENTED)
    return Paths(tmp_path)


def test_a_change_merges_nested_and_dotted_keys_and_keeps_comments_and_layout(paths: Paths) -> None:
    written = config_file.update(paths, {"keep_alive": "10m", "llama_cpp.parallel": 2, "llama_cpp": {"ctx_size": 4096}})
    text = paths.config.read_text()
    assert written.keys == ["keep_alive", "llama_cpp.ctx_size", "llama_cpp.parallel"]
    for kept in ("# my LMForge", "# not the default: another instance runs on 11430", "# keys for the LAN",
                 "# small machine", 'name = "webui"'):
        assert kept in text
    settings = decode_settings(text)
    assert (settings.keep_alive, settings.llama_cpp.ctx_size, settings.llama_cpp.parallel) == ("10m", 4096, 2)
    assert text.index('keep_alive = "10m"') < text.index("[[api_keys]]")  # a top-level key above the tables
    assert settings.port == 11431 and settings.api_keys[0].key == "webui-key-0123456789"


def test_null_removes_a_key_so_its_default_applies_again(paths: Paths) -> None:
    written = config_file.update(paths, {"port": None})
    assert "port" not in paths.config.read_text() and decode_settings(paths.config.read_text()).port == 11430
    assert written.keys == ["port"]


@pytest.mark.parametrize(("change", "message"), [
    ({"kep_alive": "5m"}, 'unknown key "kep_alive" (did you mean "keep_alive"?)'),
    ({"llama_cpp.ctx": 4096}, 'unknown key "llama_cpp.ctx"'),
    ({"llama_cpp": {"ctx_size": "big"}}, "llama_cpp.ctx_size: Expected `int`, got `str`"),
    ({"max_queue": 5000}, "max_queue must be 0-1024"),
    ({"keep_alive": "10 days"}, "keep_alive '10 days' is not a duration"),
    ({"trusted_networks": ["10.0.0.0/33"]}, "trusted_networks: '10.0.0.0/33' is not a network"),
    ({"image_allow_hosts": ["10.0.0.0/33"]}, "image_allow_hosts: '10.0.0.0/33' is not a network"),
    ({"image_allow_hosts": ["http://cdn.lan"]}, "image_allow_hosts: 'http://cdn.lan' must be a host"),
    ({"image_allow_hosts": ["cdn.lan:99999"]}, "image_allow_hosts: 'cdn.lan:99999' has a port that is not 1-65535"),
    ({"thinking_budget_low": 0}, "thinking_budget_low must be >= 1"),
    ({"image_max_redirects": 11}, "image_max_redirects must be 0-10"),
    ({"api_keys": [{"scope": "admin"}]}, 'api_keys[0]: the required key "key" is missing'),
    ({"api_keys": [{"key": "short"}]}, "api_keys[0].key: api_keys[0] is shorter than 8"),
    ({"write_timeout_s": 0}, "write_timeout_s must be > 0"),
    ({"host": "0.0.0.0", "api_keys": []}, "host = '0.0.0.0' serves other machines"),
    ({"port": {"x": 1}}, "port: Expected `int`, got `object`"),
    ({"port..x": 1}, 'unknown key "port..x"'),
    ({"llama_cpp.ctx_size": 4096, "llama_cpp": 5}, "llama_cpp is given"),
])
def test_a_bad_change_names_the_key_and_leaves_the_file_byte_for_byte(paths: Paths, change: dict,
                                                                      message: str) -> None:
    before = paths.config.read_bytes()
    with pytest.raises(ConfigError) as caught:
        config_file.update(paths, change)
    assert message in str(caught.value)
    assert paths.config.read_bytes() == before
    assert [p.name for p in paths.home.iterdir()] == ["config.toml"]  # no temporary file left behind


def test_a_file_that_is_not_toml_is_never_overwritten(paths: Paths) -> None:
    paths.config.write_text("port = \n")
    with pytest.raises(config_file.FileUnreadable, match="is not valid TOML"):
        config_file.update(paths, {"keep_alive": "1m"})
    assert paths.config.read_text() == "port = \n"


def test_a_change_may_repair_a_file_whose_keys_are_wrong(paths: Paths) -> None:
    paths.config.write_text('kep_alive = "5m"\n')
    config_file.update(paths, {"kep_alive": None, "keep_alive": "5m"})
    assert paths.config.read_text() == 'keep_alive = "5m"\n'


def test_the_secret_placeholder_keeps_the_stored_keys(paths: Paths) -> None:
    config_file.update(paths, {"api_key": "admin-key-0123456789"})
    kept = {"api_key": "***", "api_keys": [{"key": "***", "name": "webui", "scope": "admin"}]}
    written = config_file.update(paths, kept)
    settings = decode_settings(paths.config.read_text())
    assert settings.api_key == "admin-key-0123456789"
    assert (settings.api_keys[0].key, settings.api_keys[0].scope) == ("webui-key-0123456789", "admin")
    assert written.keys == ["api_keys"]
    with pytest.raises(ConfigError, match=r"api_keys\[1\].key is \"\*\*\*\""):
        config_file.update(paths, {"api_keys": [{"key": "***", "name": "webui"}, {"key": "***"}]})


def test_the_write_is_atomic_private_and_follows_a_link(paths: Paths, tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "lmforge.toml"
    real.parent.mkdir()
    real.write_text(COMMENTED)
    paths.config.unlink()
    paths.config.symlink_to(real)
    config_file.update(paths, {"keep_alive": "1h"})
    assert paths.config.is_symlink() and 'keep_alive = "1h"' in real.read_text()
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600
    assert sorted(p.name for p in real.parent.iterdir()) == ["lmforge.toml"]


def test_an_unchanged_value_writes_nothing(paths: Paths) -> None:
    mtime = paths.config.stat().st_mtime_ns
    written = config_file.update(paths, {"port": 11431})
    assert written.keys == [] and paths.config.stat().st_mtime_ns == mtime


def test_redaction_shows_set_secrets_as_stars_and_unset_ones_as_empty(paths: Paths) -> None:
    data = config_file.redacted(Settings(api_key="admin-key-0123456789",
                                         api_keys=decode_settings(COMMENTED).api_keys))
    assert data["api_key"] == "***" and data["api_keys"][0] == {"key": "***", "scope": "inference", "name": "webui"}
    assert config_file.redacted(Settings())["api_key"] == ""


def test_describe_shows_the_environment_and_what_waits_for_a_restart(paths: Paths,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_API_KEY", "env-admin-key-0123456789")
    started = config_file.check(paths.config.read_text(), paths.home)[1]
    config_file.update(paths, {"llama_cpp.ctx_size": 4096, "keep_alive": "1m"})
    view = config_file.describe(paths, started)
    assert view["path"] == str(paths.config) and view["env_overrides"] == {"api_key": "LMFORGE_API_KEY"}
    assert view["config"]["api_key"] == "***" and "env-admin-key" not in str(view)
    assert view["restart_required"] == ["llama_cpp.ctx_size"] and "keep_alive" in view["live"]
    paths.config.write_text("port = ")
    broken = config_file.describe(paths, started, started)
    assert "not valid TOML" in broken["error"] and broken["config"]["port"] == 11431


def test_an_overridden_key_is_reported_as_such(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_PORT", "12000")
    report = config_file.update(paths, {"port": 12001, "keep_alive": "1m", "llama_cpp.ctx_size": 4096}).report()
    assert report == {"changed": ["port", "keep_alive", "llama_cpp.ctx_size"], "applied": ["keep_alive"],
                      "restart_required": ["llama_cpp.ctx_size"], "overridden_by_env": ["port"]}


def test_guarded_keys_are_found_in_nested_and_dotted_changes() -> None:
    change = config_file.nested({"trusted_networks": ["10.0.0.0/8"], "llama_cpp.server": "/bin/sh",
                                 "keep_alive": "1m", "api_key": "***"})
    assert config_file.guard_of(change) == {Guard.ADMIN_KEY: ["trusted_networks"], Guard.LOCAL: ["llama_cpp.server"]}
