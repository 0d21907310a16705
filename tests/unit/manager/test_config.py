"""Settings: file, then environment; mistakes are reported with where they are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from manager.config import ConfigError, load_settings


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMFORGE_PORT", raising=False)
    monkeypatch.delenv("LMFORGE_LLAMA_SERVER", raising=False)
    settings, paths = load_settings(tmp_path)
    assert (settings.host, settings.port, settings.keep_alive) == ("127.0.0.1", 11430, "5m")
    assert paths.index == tmp_path / "models.json"


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.toml").write_text('port = 12000\nkeep_alive = "1h"\n[llama_cpp]\nparallel = 2\n')
    monkeypatch.setenv("LMFORGE_PORT", "12345")
    monkeypatch.setenv("LMFORGE_LLAMA_SERVER", "/opt/llama-server")
    settings, _ = load_settings(tmp_path)
    assert (settings.port, settings.keep_alive, settings.llama_cpp.parallel) == (12345, "1h", 2)
    assert settings.llama_cpp.server == "/opt/llama-server"


@pytest.mark.parametrize(
    ("text", "message"),
    [("port = 'x'", "Expected `int`"), ("prot = 1", 'unknown key "prot" \\(did you mean "port"\\?\\)'), ("port = 70000", "port must be"),
     ("memory_fraction = 2.0", "memory_fraction"), ('keep_alive = "10 days"', "keep_alive"), ("[llama_cpp]\nparallel = 0", "parallel"), ("port = ", "config.toml"),
     ('cpu_policy = "fast"', "cpu_policy must be one of auto, exclusive, shared"),
     ("cpu_fair_share_s = 0", "cpu_fair_share_s"), ("cpu_cores = -1", "cpu_cores"),
     ('[llama_cpp]\nextra_args = ["--threads=8"]', "--threads would run more threads"),
     ('[llama_cpp]\nextra_args = ["-tb", "8"]', "-tb would run more threads")],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path)


def test_bad_port_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_PORT", "eighty")
    with pytest.raises(ConfigError, match="LMFORGE_PORT"):
        load_settings(tmp_path)


def test_runtime_directory_is_short_and_per_home(tmp_path: Path) -> None:
    _, a = load_settings(tmp_path / "a")
    _, b = load_settings(tmp_path / "b")
    assert a.runtime != b.runtime and len(str(a.runtime / "supervisor.sock")) < 100


@pytest.mark.parametrize(("text", "message"), [
    ('api_key = "short"', "api_key is shorter than 8"),
    ('[[api_keys]]\nkey = "tiny"\nname = "webui"', "webui is shorter than 8"),
    ('[[api_keys]]\nkey = "long-enough-key"\nscope = "root"', "scope 'root'"),
    ('api_key = "long-enough-key"\n[[api_keys]]\nkey = "long-enough-key"', "listed twice"),
    ('host = "0.0.0.0"', "allow_unauthenticated"),
    ('trusted_networks = ["192.168.1.0/33"]', "trusted_networks"),
    ("max_queue = 5000", "max_queue must be 0-1024"),
    ('tls_cert = "c.pem"', "tls_cert and tls_key must be set together"),
])
def test_security_settings_are_checked_and_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            text: str, message: str) -> None:
    monkeypatch.delenv("LMFORGE_API_KEY", raising=False)
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path)


def test_a_short_key_from_the_environment_is_refused_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_API_KEY", "x")
    with pytest.raises(ConfigError, match="api_key is shorter"):
        load_settings(tmp_path)


def test_tls_paths_are_absolute_for_every_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway and the CLI start in different directories: both must read the same files."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "config.toml").write_text('tls_cert = "certs/c.pem"\ntls_key = "~/k.pem"\n')
    settings, _ = load_settings(tmp_path)
    assert settings.tls_cert == str(tmp_path / "certs" / "c.pem")
    assert settings.tls_key == str(tmp_path / "user" / "k.pem")


def test_the_cores_keys_of_a_changed_file_apply_live_and_an_invalid_file_changes_nothing(tmp_path: Path) -> None:
    from manager.live_config import ConfigWatch, apply_live, read_live

    config = tmp_path / "config.toml"
    config.write_text('cpu_policy = "exclusive"\nport = 11431\n')
    watch = ConfigWatch(config)
    running = load_settings(tmp_path)[0]
    assert not watch.changed()
    config.write_text('cpu_policy = "shared"\ncpu_fair_share_s = 2.5\nport = 11432\n')
    assert watch.changed() and not watch.changed()
    applied, lines = apply_live(running, read_live(tmp_path))  # type: ignore[arg-type]
    assert (applied.cpu_policy, applied.cpu_fair_share_s, applied.port) == ("shared", 2.5, 11431)  # port: restart
    assert lines == ["cpu_policy: 'exclusive' → 'shared'", "cpu_fair_share_s: 1.0 → 2.5"]
    config.write_text('cpu_policy = "fast"\n')
    assert isinstance(read_live(tmp_path), ConfigError)


def test_a_file_saved_by_renaming_a_new_one_over_it_is_a_change_with_the_same_size_and_time(tmp_path: Path) -> None:
    from manager.live_config import ConfigWatch

    config = tmp_path / "config.toml"
    config.write_text('cpu_policy = "exclusive"\n')
    watch = ConfigWatch(config)
    stat = config.stat()
    saved = tmp_path / "config.toml.new"
    saved.write_text('cpu_policy = "auto"     \n')  # the same size
    os.utime(saved, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same time
    os.replace(saved, config)
    assert watch.changed()
