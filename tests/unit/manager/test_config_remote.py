"""`[[remote]]` entries: checked as config, listed by the model store beside the installed models, never written
into the index, and their keys redacted wherever the config is shown."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from catalog.store import ModelStore, StoreError
from manager.config import ConfigError, Paths, Settings
from manager.config_file import redacted
from manager.config_remote import remote_entries
from tests.support import tiny_models


def settings(*remote: dict) -> Settings:
    s = msgspec.convert({"remote": list(remote)}, Settings)
    s.validate()
    return s


@pytest.mark.parametrize(("entry", "error"), [
    ({"name": "far", "url": "ftp://host"}, "remote[0].url: 'ftp://host' must be an http(s) base URL"),
    ({"name": "far", "url": "http://host/?x=1"}, "must be an http(s) base URL"),
    ({"name": "far", "url": "http://me:secret@host"}, "remote[0].url: put no credentials in the URL"),
    ({"name": "../far", "url": "http://host"}, "remote[0].name: '../far' is not a model name"),
    ({"name": "far", "url": "http://host", "kinds": ["vision"]}, "remote[0].kinds: ['vision']"),
    ({"name": "far", "url": "http://host", "kinds": []}, "remote[0].kinds: nothing"),
    ({"name": "far", "url": "http://host", "parallel": 0}, "remote[0].parallel must be 1-1024"),
    ({"name": "far", "url": "http://host", "health_path": "health"}, "health_path must start with /"),
])
def test_a_wrong_remote_entry_is_named(entry: dict, error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings(entry)
    assert error in str(raised.value)


def test_a_name_listed_twice_is_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        settings({"name": "far", "url": "http://a"}, {"name": "far", "url": "http://b"})
    assert str(raised.value) == "remote[1].name: 'far' is listed twice"


def test_the_store_lists_remote_models_first_and_never_writes_them(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    tiny_models.write_all(models)
    paths = Paths(tmp_path / "home")
    ModelStore(paths).import_gguf(models / "chat.gguf", "local")
    ModelStore(paths).import_gguf(models / "chat.gguf", "far")
    s = settings({"name": "far", "url": "http://10.0.0.5:30000/", "model": "Qwen/Qwen3", "kinds": ["chat", "embed"]})
    store = ModelStore(paths, remote_entries(s.remote))
    far = store.get("far")
    assert far is not None and (far.format, far.path, far.repo, far.kinds) == (
        "remote", "http://10.0.0.5:30000", "Qwen/Qwen3", ("chat", "embed"))
    assert [m.name for m in store.list()] == ["far", "local"]  # the remote name hides the installed one
    assert store.find("far:latest") == far
    store.remove("local")
    assert [m.name for m in ModelStore(paths).list()] == ["far"]  # the index: the installed "far" alone
    for change in (lambda: store.remove("far"), lambda: store.copy("far", "mine"), lambda: store.copy("far", "far"),
                   lambda: store.import_gguf(models / "chat.gguf", "far")):
        with pytest.raises(StoreError, match="'far' is a \\[\\[remote\\]\\] model in config.toml"):
            change()
    assert ModelStore(paths).get("far") is not None  # the installed one, untouched


def test_remote_keys_are_redacted() -> None:
    s = settings({"name": "far", "url": "http://a", "api_key": "a-remote-key-0123456789"},
                 {"name": "near", "url": "http://b"})
    assert [r["api_key"] for r in redacted(s)["remote"]] == ["***", ""]
