"""Index changes in the store: imports with a vision projector, copies, deletes, and older index files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from catalog.store import ModelNotFound, ModelStore, StoreError
from manager.config import Paths


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(Paths(tmp_path / "home"))


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_an_import_with_a_projector_places_both_files_and_can_see(store: ModelStore, models_dir: Path) -> None:
    entry = store.import_gguf(models_dir / "chat.gguf", "tiny:vision", mmproj=models_dir / "mmproj.gguf")
    assert entry.vision and entry.chat_template and not entry.tools and not entry.thinking
    model, projector = Path(entry.path), Path(entry.mmproj)
    assert model.parent == projector.parent == store.model_dir("tiny:vision")
    assert projector.read_bytes() == (models_dir / "mmproj.gguf").read_bytes()
    assert store.get("tiny:vision") == entry


def test_an_import_without_a_projector_cannot_see(store: ModelStore, models_dir: Path) -> None:
    entry = store.import_gguf(models_dir / "chat.gguf", "tiny:chat")
    assert not entry.vision and entry.mmproj == "" and entry.chat_template


def test_a_projector_that_is_a_text_model_is_refused_and_leaves_nothing(store: ModelStore, models_dir: Path) -> None:
    with pytest.raises(StoreError, match="not a vision projector"):
        store.import_gguf(models_dir / "chat.gguf", "x", mmproj=models_dir / "embed.gguf")
    assert store.list() == [] and files_under(store.paths.models) == []


def test_a_projector_imported_as_a_model_is_refused(store: ModelStore, models_dir: Path) -> None:
    with pytest.raises(StoreError, match="vision projector"):
        store.import_gguf(models_dir / "mmproj.gguf", "x")
    assert store.list() == []


def test_a_copy_is_a_second_entry_whose_files_survive_deleting_the_original(
        store: ModelStore, models_dir: Path) -> None:
    original = store.import_gguf(models_dir / "chat.gguf", "a", mmproj=models_dir / "mmproj.gguf")
    copied = store.copy("a", "b")
    assert copied.name == "b" and copied.sha256 == original.sha256 and copied.vision
    assert Path(copied.path).parent == store.model_dir("b") and Path(copied.mmproj).parent == store.model_dir("b")
    assert Path(copied.path).stat().st_ino == Path(original.path).stat().st_ino  # a hard link, not a second copy
    store.remove("a")
    assert [m.name for m in store.list()] == ["b"] and not store.model_dir("a").exists()
    assert Path(copied.path).read_bytes() == (models_dir / "chat.gguf").read_bytes()
    assert Path(copied.mmproj).is_file()


def test_deleting_a_copy_leaves_the_original_whole(store: ModelStore, models_dir: Path) -> None:
    original = store.import_gguf(models_dir / "chat.gguf", "a")
    store.copy("a", "b")
    store.remove("b")
    assert store.get("a") == original and Path(original.path).read_bytes() == (models_dir / "chat.gguf").read_bytes()


def test_copying_onto_an_existing_name_replaces_it_and_its_files(store: ModelStore, models_dir: Path) -> None:
    store.import_gguf(models_dir / "chat.gguf", "a")
    store.import_gguf(models_dir / "embed.gguf", "b")
    copied = store.copy("a", "b")
    assert store.get("b") == copied and copied.sha256 == store.get("a").sha256  # type: ignore[union-attr]
    assert [p.name for p in files_under(store.model_dir("b"))] == ["chat.gguf"]  # embed.gguf went with the old b


def test_copying_a_missing_model_or_onto_a_bad_name_is_refused(store: ModelStore, models_dir: Path) -> None:
    with pytest.raises(ModelNotFound, match="'nope' is not installed"):
        store.copy("nope", "b")
    store.import_gguf(models_dir / "chat.gguf", "a")
    with pytest.raises(StoreError, match="invalid model name"):
        store.copy("a", "../escape")
    assert [m.name for m in store.list()] == ["a"]


def test_copying_a_model_onto_itself_changes_nothing(store: ModelStore, models_dir: Path) -> None:
    entry = store.import_gguf(models_dir / "chat.gguf", "a")
    assert store.copy("a", "a") == entry and store.list() == [entry]


def test_reimporting_a_name_from_another_file_drops_the_former_file(store: ModelStore, models_dir: Path,
                                                                   tmp_path: Path) -> None:
    store.import_gguf(models_dir / "chat.gguf", "m", mmproj=models_dir / "mmproj.gguf")
    other = tmp_path / "other.gguf"
    shutil.copyfile(models_dir / "cycle.gguf", other)
    entry = store.import_gguf(other, "m")
    assert [p.name for p in files_under(store.model_dir("m"))] == ["other.gguf"]
    assert not entry.vision and store.list() == [entry]


def test_removing_an_unknown_model_is_model_not_found(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound, match="not installed"):
        store.remove("nope")


def test_an_index_written_before_capabilities_is_read_with_their_defaults(store: ModelStore) -> None:
    store.paths.home.mkdir(parents=True)
    store.paths.index.write_text(json.dumps({"schema_version": 1, "models": [
        {"name": "old", "path": "/m/old.gguf", "kinds": ["chat", "embed"], "architecture": "llama"}]}))
    (old,) = store.list()
    assert old.name == "old" and old.kinds == ("chat", "embed")
    assert (old.tools, old.thinking, old.vision, old.mmproj, old.chat_template) == (False, False, False, "", False)
