"""Index changes in the store: imports with a vision projector, pulled directories, copies, deletes, older files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Callable

import msgspec
import pytest

from catalog.store import ModelNotFound, ModelStore, StoreError
from manager.config import Paths
from manager.protocol import ModelEntry, PullFile, PullPlan, SlotKind
from tests.support.tiny_models import write_chat_model


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


# --- pulled models: a directory of files per repo and quant ---

def pulled(store: ModelStore, directory: str, files: dict[str, bytes | Path], **plan: object) -> PullPlan:
    """Files as the downloader leaves them in `models/<directory>`, and the plan that names them."""
    listed = []
    for relative, content in files.items():
        target = store.paths.models / directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.read_bytes() if isinstance(content, Path) else content
        target.write_bytes(data)
        role = "mmproj" if relative.startswith("mmproj") else "weights" if relative.endswith(
            (".gguf", ".safetensors")) else "config"
        listed.append(PullFile(path=relative, size=len(data), sha256=hashlib.sha256(data).hexdigest(), role=role))
    fields: dict[str, object] = {"name": "m", "source": "hf", "repo": "owner/repo", "revision": "c0ffee" * 6 + "abcd",
                                 "quant": "Q4_K_M", "directory": directory, "files": tuple(listed)} | plan
    return PullPlan(**fields)  # type: ignore[arg-type]


def test_a_pulled_split_gguf_is_one_entry_over_every_shard(store: ModelStore, models_dir: Path,
                                                           tmp_path: Path) -> None:
    second = write_chat_model(tmp_path / "shard2.gguf", seed=1)  # read_gguf_info only needs each shard's header
    plan = pulled(store, "hf/owner--repo/Q4_K_M", {
        "Q4_K_M/m-00001-of-00002.gguf": models_dir / "chat.gguf", "Q4_K_M/m-00002-of-00002.gguf": second},
        primary="Q4_K_M/m-00001-of-00002.gguf", catalog="tiny:1b:4bit", options={"temperature": 0.6})
    entry = store.index_pulled(plan)
    directory = store.paths.models / "hf/owner--repo/Q4_K_M"
    assert entry.path == str(directory / "Q4_K_M/m-00001-of-00002.gguf") and entry.dir == str(directory)
    assert entry.files == ("Q4_K_M/m-00001-of-00002.gguf", "Q4_K_M/m-00002-of-00002.gguf")
    assert entry.size_bytes == sum(f.size for f in plan.files)
    assert entry.sha256 == plan.files[0].sha256  # the downloader's hash, not hashed again
    one = store.import_gguf(models_dir / "chat.gguf", "one-shard")
    assert entry.parameters == 2 * one.parameters
    assert (entry.source, entry.repo, entry.revision, entry.quant, entry.catalog, entry.options) == (
        "hf", "owner/repo", plan.revision, "Q4_K_M", "tiny:1b:4bit", {"temperature": 0.6})
    assert entry.kinds == (SlotKind.CHAT, SlotKind.EMBED) and entry.chat_template and store.get("m") == entry
    assert json.loads(store.paths.index.read_text())["models"][0]["dir"] == "hf/owner--repo/Q4_K_M"


def test_a_model_is_found_by_every_name_a_user_types_for_it(store: ModelStore, models_dir: Path) -> None:
    shortcut = store.index_pulled(pulled(store, "hf/o--q/Q4_K_M", {"m.gguf": models_dir / "chat.gguf"},
                                         name="qwen3:8b:4bit", primary="m.gguf", catalog="qwen3:8b:4bit"))
    hub = store.index_pulled(pulled(store, "hf/o--r/Q8_0", {"m.gguf": models_dir / "chat.gguf"},
                                    name="Owner/Repo:Q8_0", primary="m.gguf", catalog="llama3.1:8b:8bit"))
    plain = store.import_gguf(models_dir / "chat.gguf", "plain:latest")
    for typed in ("qwen3:8b:4bit", "qwen3:8b", "QWEN3:8B:latest", "qwen3:8b:q4_k_m"):
        assert store.find(typed) == shortcut, typed
    for typed in ("Owner/Repo:Q8_0", "hf.co/owner/repo:q8_0", "https://huggingface.co/Owner/Repo:Q8_0",
                  "llama3.1:8b:8bit"):  # the last: an entry pulled as that shortcut
        assert store.find(typed) == hub, typed
    assert store.find("plain:latest") == plain and store.find("plain") == plain  # Ollama's default tag
    assert store.find("owner/repo") is None and store.find("qwen3:8b:8bit") is None and store.find("nope") is None


def test_a_pulled_vision_model_counts_its_projector_apart(store: ModelStore, models_dir: Path) -> None:
    plan = pulled(store, "hf/owner--vl/Q4_K_M", {"vl-Q4_K_M.gguf": models_dir / "chat.gguf",
                                                 "mmproj-F16.gguf": models_dir / "mmproj.gguf"},
                  primary="vl-Q4_K_M.gguf", mmproj="mmproj-F16.gguf")
    entry = store.index_pulled(plan)
    assert entry.vision and entry.mmproj == str(store.paths.models / "hf/owner--vl/Q4_K_M/mmproj-F16.gguf")
    assert entry.size_bytes == (models_dir / "chat.gguf").stat().st_size  # the engine's plan adds the projector
    assert entry.files == ("vl-Q4_K_M.gguf", "mmproj-F16.gguf")


def test_the_catalog_kinds_of_a_pull_override_what_the_header_suggests(store: ModelStore, models_dir: Path) -> None:
    plan = pulled(store, "hf/o--embed/F16", {"e.gguf": models_dir / "chat.gguf"}, primary="e.gguf",
                  kinds=(SlotKind.EMBED,))
    entry = store.index_pulled(plan)
    assert entry.kinds == (SlotKind.EMBED,) and not entry.tools and not entry.vision


def test_a_pulled_safetensors_model_is_its_directory(store: ModelStore) -> None:
    config = {"model_type": "qwen3", "max_position_embeddings": 40960}
    tokenizer = {"chat_template": "{% if tools %}{{ tools }}{% endif %}<think>"}
    plan = pulled(store, "hf/Qwen--Qwen3-0.6B/all", {
        "config.json": json.dumps(config).encode(), "tokenizer_config.json": json.dumps(tokenizer).encode(),
        "tokenizer.json": b"{}", "model.safetensors": b"\0" * 1000}, format="safetensors", quant="")
    entry = store.index_pulled(plan)
    assert entry.path == entry.dir == str(store.paths.models / "hf/Qwen--Qwen3-0.6B/all")
    assert (entry.format, entry.architecture, entry.context_length, entry.size_bytes) == (
        "safetensors", "qwen3", 40960, 1000)
    assert entry.chat_template and entry.tools and entry.thinking and not entry.vision
    assert entry.kinds == (SlotKind.CHAT,) and len(entry.files) == 4
    assert store.get("m") == entry


def test_an_mlx_model_without_a_template_cannot_chat_by_template(store: ModelStore) -> None:
    plan = pulled(store, "hf/mlx-community--x/all", {"config.json": b'{"text_config": {"max_position_embeddings": 8}}',
                                                    "model.safetensors": b"\0" * 10}, format="mlx",
                  context_length=4096)
    entry = store.index_pulled(plan)
    assert not entry.chat_template and entry.context_length == 8 and entry.architecture == ""


@pytest.mark.parametrize(("spoil", "fragment"), [
    (lambda d: (d / "m.gguf").unlink(), "m.gguf is missing"),
    (lambda d: (d / "m.gguf").write_bytes(b"short"), "has 5 bytes, the pull expected"),
])
def test_a_pull_whose_files_are_not_all_there_is_refused_and_changes_nothing(
        store: ModelStore, models_dir: Path, spoil: Callable[[Path], None], fragment: str) -> None:
    kept = store.import_gguf(models_dir / "embed.gguf", "m")
    plan = pulled(store, "hf/o--r/Q4_K_M", {"m.gguf": models_dir / "chat.gguf"}, primary="m.gguf")
    spoil(store.paths.models / plan.directory)
    with pytest.raises(StoreError, match=fragment):
        store.index_pulled(plan)
    assert store.list() == [kept] and Path(kept.path).is_file()


@pytest.mark.parametrize(("change", "fragment"), [
    ({"directory": "../outside"}, "pull directory '../outside' is not a path inside"),
    ({"directory": "/etc"}, "is not a path inside"),
    ({"files": (PullFile(path="../../x", size=1),)}, "pulled file '../../x' is not a path inside"),
    ({"primary": "other.gguf"}, "primary file 'other.gguf' is not one of the pulled files"),
    ({"primary": ""}, "must name its primary file"),
    ({"files": ()}, "the pull names no files"),
    ({"name": "../x"}, "invalid model name"),
])
def test_a_pull_plan_that_escapes_or_names_no_file_is_refused(store: ModelStore, models_dir: Path,
                                                              change: dict[str, object], fragment: str) -> None:
    plan = pulled(store, "hf/o--r/Q4_K_M", {"m.gguf": models_dir / "chat.gguf"}, primary="m.gguf")
    with pytest.raises(StoreError, match=re.escape(fragment)):
        store.index_pulled(msgspec.structs.replace(plan, **change))
    assert store.list() == []


def test_a_mmproj_pulled_as_the_model_is_refused(store: ModelStore, models_dir: Path) -> None:
    plan = pulled(store, "hf/o--r/F16", {"mmproj.gguf": models_dir / "mmproj.gguf"}, primary="mmproj.gguf")
    with pytest.raises(StoreError, match="is a vision projector"):
        store.index_pulled(plan)


def test_two_names_of_one_pulled_directory_share_it_until_the_last_goes(store: ModelStore, models_dir: Path) -> None:
    files = {"m-Q4_K_M.gguf": models_dir / "chat.gguf"}
    shortcut = store.index_pulled(pulled(store, "hf/o--r/Q4_K_M", files, primary="m-Q4_K_M.gguf", name="m:4bit"))
    repo = store.index_pulled(pulled(store, "hf/o--r/Q4_K_M", files, primary="m-Q4_K_M.gguf", name="o/r:Q4_K_M"))
    other = store.index_pulled(pulled(store, "hf/o--r/Q8_0", {"m-Q8_0.gguf": models_dir / "cycle.gguf"},
                                      primary="m-Q8_0.gguf", name="m:8bit"))
    assert shortcut.dir == repo.dir != other.dir
    store.remove("m:4bit")
    assert Path(repo.path).is_file() and store.get("o/r:Q4_K_M") == repo  # the other name still uses it
    store.remove("o/r:Q4_K_M")
    assert not Path(repo.dir).exists()  # now that variant goes, and only that one
    assert Path(other.path).is_file() and store.get("m:8bit") == other
    store.remove("m:8bit")
    assert not (store.paths.models / "hf").exists() and store.paths.models.is_dir()  # empty parents pruned


def test_a_copy_of_a_pulled_model_links_every_file_into_its_own_directory(store: ModelStore,
                                                                          models_dir: Path) -> None:
    plan = pulled(store, "hf/o--vl/Q4_K_M", {"sub/vl.gguf": models_dir / "chat.gguf",
                                             "mmproj-F16.gguf": models_dir / "mmproj.gguf",
                                             "tokenizer.json": b"{}"}, primary="sub/vl.gguf", mmproj="mmproj-F16.gguf")
    original = store.index_pulled(plan)
    copied = store.copy("m", "mine")
    target = store.model_dir("mine")
    assert copied.dir == str(target) and copied.files == original.files
    assert copied.path == str(target / "sub/vl.gguf") and copied.mmproj == str(target / "mmproj-F16.gguf")
    for relative in original.files:
        assert (target / relative).stat().st_ino == (Path(original.dir) / relative).stat().st_ino
    assert (copied.repo, copied.quant, copied.vision) == ("owner/repo", "Q4_K_M", True)
    store.remove("m")
    assert not Path(original.dir).exists() and all((target / f).is_file() for f in copied.files)


def test_pulling_a_name_again_keeps_every_file_it_lists_and_drops_the_former_ones(store: ModelStore,
                                                                                   models_dir: Path) -> None:
    imported = store.import_gguf(models_dir / "embed.gguf", "m")
    plan = pulled(store, "hf/o--r/Q4_K_M", {"a.gguf": models_dir / "chat.gguf", "tokenizer.json": b"{}"},
                  primary="a.gguf")
    entry = store.index_pulled(plan)
    assert not Path(imported.dir).exists()  # the import that name meant is gone with it
    assert sorted(p.name for p in files_under(Path(entry.dir))) == ["a.gguf", "tokenizer.json"]
    smaller = pulled(store, "hf/o--r/Q4_K_M", {"a.gguf": models_dir / "chat.gguf"}, primary="a.gguf")
    store.index_pulled(smaller)
    assert [p.name for p in files_under(Path(entry.dir))] == ["a.gguf"]


def test_a_model_file_outside_the_store_is_never_deleted(store: ModelStore, tmp_path: Path,
                                                          models_dir: Path) -> None:
    outside = tmp_path / "mine" / "x.gguf"
    outside.parent.mkdir()
    shutil.copyfile(models_dir / "chat.gguf", outside)
    store.add(ModelEntry(name="x", path=str(outside), dir=str(outside.parent), files=("x.gguf",)))
    store.remove("x")
    assert outside.is_file()
