"""The index's on-disk schema: v2 paths relative to the models directory, v1 files migrated, newer ones refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import msgspec
import pytest

from catalog.index_file import SCHEMA_VERSION, StoredModel, decode_index, from_entry, to_entry
from catalog.store import ModelStore, StoreError
from manager.config import Paths
from manager.protocol import ModelEntry, SlotKind


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(Paths(tmp_path / "home"))


def v1_entry(model_dir: Path) -> dict[str, object]:
    """An entry exactly as schema 1 (LMForge before directories) wrote an import with a projector."""
    return {
        "name": "tiny:vision", "path": str(model_dir / "chat.gguf"), "format": "gguf", "size_bytes": 440224,
        "sha256": "41" * 32, "added_at": 1796058193.79, "source": "import", "kinds": ["chat", "embed"],
        "architecture": "llama", "context_length": 16384, "parameters": 108480, "quantization": "F32",
        "tools": False, "thinking": False, "vision": True, "mmproj": str(model_dir / "mmproj.gguf"),
        "chat_template": True,
    }


def write_v1(store: ModelStore, models_dir: Path) -> Path:
    """A v1 index naming real files in the store, as the earlier import placed them."""
    model_dir = store.paths.models / "tiny-vision-37ade5f3"
    model_dir.mkdir(parents=True)
    shutil.copyfile(models_dir / "chat.gguf", model_dir / "chat.gguf")
    shutil.copyfile(models_dir / "mmproj.gguf", model_dir / "mmproj.gguf")
    store.paths.index.write_text(json.dumps({"schema_version": 1, "models": [v1_entry(model_dir)]}, indent=2))
    return model_dir


def test_a_v1_index_is_read_as_a_directory_holding_the_model_and_its_projector(store: ModelStore,
                                                                            models_dir: Path) -> None:
    model_dir = write_v1(store, models_dir)
    (entry,) = store.list()
    assert entry.dir == str(model_dir) and entry.files == ("chat.gguf", "mmproj.gguf")
    assert entry.path == str(model_dir / "chat.gguf") and entry.mmproj == str(model_dir / "mmproj.gguf")
    assert entry.kinds == (SlotKind.CHAT, SlotKind.EMBED) and entry.vision and entry.sha256 == "41" * 32
    assert json.loads(store.paths.index.read_text())["schema_version"] == 1  # reading never rewrites it


def test_migrate_rewrites_v1_as_v2_keeps_a_backup_and_changes_no_entry(store: ModelStore, models_dir: Path) -> None:
    write_v1(store, models_dir)
    original = store.paths.index.read_bytes()
    before = store.list()
    assert store.migrate() is True
    written = json.loads(store.paths.index.read_text())
    assert written["schema_version"] == SCHEMA_VERSION == 2
    (stored,) = written["models"]
    assert (stored["dir"], stored["primary"], stored["mmproj"]) == ("tiny-vision-37ade5f3", "chat.gguf", "mmproj.gguf")
    assert "path" not in stored
    assert (store.paths.home / "models.json.v1.bak").read_bytes() == original
    assert store.list() == before
    assert store.migrate() is False  # already v2


def test_a_migrated_entry_is_deleted_with_its_directory(store: ModelStore, models_dir: Path) -> None:
    model_dir = write_v1(store, models_dir)
    store.migrate()
    store.remove("tiny:vision")
    assert store.list() == [] and not model_dir.exists() and store.paths.models.is_dir()


def test_any_write_to_a_v1_index_writes_v2_and_keeps_the_v1_file(store: ModelStore, models_dir: Path) -> None:
    write_v1(store, models_dir)
    original = store.paths.index.read_bytes()
    store.import_gguf(models_dir / "embed.gguf", "e")
    assert json.loads(store.paths.index.read_text())["schema_version"] == 2
    assert (store.paths.home / "models.json.v1.bak").read_bytes() == original
    assert sorted(m.name for m in store.list()) == ["e", "tiny:vision"]


def test_an_index_from_a_newer_version_is_refused_and_left_untouched(store: ModelStore, models_dir: Path) -> None:
    store.paths.home.mkdir(parents=True)
    store.paths.index.write_text(json.dumps({"schema_version": 3, "models": [{"name": "future", "x": 1}]}))
    before = store.paths.index.read_bytes(), store.paths.index.stat().st_mtime_ns
    for attempt in (store.list, store.migrate, lambda: store.import_gguf(models_dir / "chat.gguf", "m"),
                    lambda: store.remove("future")):
        with pytest.raises(StoreError, match=r"written by a newer LMForge \(schema 3\); upgrade"):
            attempt()
    assert (store.paths.index.read_bytes(), store.paths.index.stat().st_mtime_ns) == before
    assert not (store.paths.home / "models.json.v1.bak").exists()
    assert [p for p in store.paths.models.rglob("*") if p.is_file()] == []  # the refused import left nothing


@pytest.mark.parametrize("data", [b'{"schema_version": 0, "models": []}', b'{"schema_version": "2"}', b"[]",
                                  b'{"schema_version": 2, "models": [{"format": "gguf"}]}'])
def test_a_damaged_index_says_so(data: bytes) -> None:
    with pytest.raises(StoreError, match="damaged"):
        decode_index(data)


def test_fields_a_later_minor_version_adds_are_ignored() -> None:
    data = json.dumps({"schema_version": 2, "future": True, "models": [
        {"name": "m", "dir": "hf/o--r/Q4_K_M", "files": ["m.gguf"], "primary": "m.gguf", "kinds": ["chat", "video"],
         "new_field": {"a": 1}}]}).encode()
    index, older = decode_index(data)
    assert not older and index.models[0].name == "m"
    assert to_entry(index.models[0], Path("/store")).kinds == (SlotKind.CHAT,)  # an unknown kind is left out


def test_an_entry_inside_the_models_directory_is_stored_relative_to_it() -> None:
    models = Path("/home/u/.lmforge/models")
    directory = models / "hf/owner--repo/Q4_K_M"
    entry = ModelEntry(name="m", path=str(directory / "Q4_K_M/m-00001-of-00002.gguf"), dir=str(directory),
                       files=("Q4_K_M/m-00001-of-00002.gguf", "Q4_K_M/m-00002-of-00002.gguf", "mmproj-F16.gguf"),
                       mmproj=str(directory / "mmproj-F16.gguf"), repo="owner/repo", quant="Q4_K_M",
                       options={"temperature": 0.6}, kinds=(SlotKind.CHAT,))
    stored = from_entry(entry, models)
    assert (stored.dir, stored.primary, stored.mmproj) == (
        "hf/owner--repo/Q4_K_M", "Q4_K_M/m-00001-of-00002.gguf", "mmproj-F16.gguf")
    assert to_entry(stored, models) == entry
    assert to_entry(stored, Path("/moved/models")).path == "/moved/models/hf/owner--repo/Q4_K_M/Q4_K_M/" \
                                                           "m-00001-of-00002.gguf"  # a moved store still reads


def test_a_directory_model_outside_the_store_keeps_absolute_paths() -> None:
    entry = ModelEntry(name="st", path="/data/qwen", dir="/data/qwen", files=("config.json", "model.safetensors"),
                       format="safetensors")
    stored = from_entry(entry, Path("/home/u/.lmforge/models"))
    assert (stored.dir, stored.primary) == ("/data/qwen", "")  # "" is the directory itself
    assert to_entry(stored, Path("/elsewhere")) == entry


def test_a_lone_file_without_a_directory_round_trips() -> None:
    entry = ModelEntry(name="x", path="/models/x.gguf", mmproj="/other/mmproj.gguf")
    stored = from_entry(entry, Path("/home/u/.lmforge/models"))
    assert (stored.dir, stored.primary, stored.mmproj) == ("", "/models/x.gguf", "/other/mmproj.gguf")
    assert to_entry(stored, Path("/any")) == entry


def test_the_on_disk_schema_is_not_the_wire_type() -> None:
    """ModelEntry may gain or rename fields without changing what is on disk, and the other way round."""
    assert "path" in ModelEntry.__struct_fields__ and "path" not in StoredModel.__struct_fields__
    assert msgspec.json.decode(msgspec.json.encode(StoredModel(name="m")), type=StoredModel) == StoredModel(name="m")


def test_a_store_moved_to_another_home_still_finds_its_files(store: ModelStore, models_dir: Path,
                                                             tmp_path: Path) -> None:
    store.import_gguf(models_dir / "chat.gguf", "m", mmproj=models_dir / "mmproj.gguf")
    moved = tmp_path / "moved"
    os.rename(store.paths.home, moved)
    entry = ModelStore(Paths(moved)).get("m")
    assert entry is not None and Path(entry.path).is_file() and Path(entry.mmproj).is_file()
    assert Path(entry.dir).parent == moved / "models"
