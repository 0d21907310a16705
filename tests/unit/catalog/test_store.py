"""The model store: atomic index writes, names, imports, and bad files refused."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catalog.gguf_info import GGUFError
from catalog.store import ModelStore, StoreError, check_name
from manager.config import Paths
from manager.protocol import ModelEntry, SlotKind
from tests.support.gguf_patches import KV_COUNT_AT, VERSION_AT, alignment_zero, patched, write_small


def entry(name: str, **kw: object) -> ModelEntry:
    return ModelEntry(name=name, path=f"/models/{name}.gguf", **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(Paths(tmp_path / "home"))


def test_added_models_are_listed_and_found(store: ModelStore) -> None:
    store.add(entry("b:1"))
    store.add(entry("a:2"))
    assert [m.name for m in store.list()] == ["a:2", "b:1"]
    assert store.get("b:1") == entry("b:1")
    assert store.get("missing") is None


def test_adding_a_name_again_replaces_it(store: ModelStore) -> None:
    store.add(entry("m", size_bytes=1))
    store.add(entry("m", size_bytes=2))
    assert [m.size_bytes for m in store.list()] == [2]


def test_another_writer_is_seen_by_an_existing_reader(tmp_path: Path) -> None:
    reader, writer = ModelStore(Paths(tmp_path)), ModelStore(Paths(tmp_path))
    assert reader.list() == []
    writer.add(entry("x"))
    assert [m.name for m in reader.list()] == ["x"]


def test_removing_an_unknown_model_says_so(store: ModelStore) -> None:
    with pytest.raises(StoreError, match="not installed"):
        store.remove("nope")


def test_a_damaged_index_is_reported_not_overwritten(store: ModelStore) -> None:
    store.paths.home.mkdir(parents=True)
    store.paths.index.write_text("{not json")
    with pytest.raises(StoreError, match="damaged"):
        store.list()
    with pytest.raises(StoreError):
        store.add(entry("m"))
    assert store.paths.index.read_text() == "{not json"


@pytest.mark.parametrize("name", ["../etc", "/abs", "a//b", "", "x" * 129, "sp ace", "-lead", "semi;colon",
                                  "a/../../b", "..%2F..%2Fetc", "a%2Fb", "a\x00b", "a\r\nb", "trailing\n", "a\\b"])
def test_names_that_could_escape_the_store_are_refused(name: str) -> None:
    with pytest.raises(StoreError, match="invalid model name"):
        check_name(name)


@pytest.mark.parametrize("name", ["gemma3:270m", "owner/repo:Q4_K_M", "my-model_v2.1+x", "hf.co/org/repo:Q4_K_M",
                                  "x" * 128])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


def test_each_name_gets_its_own_directory(store: ModelStore) -> None:
    assert store.model_dir("a:b") != store.model_dir("a-b")
    assert store.model_dir("owner/repo:q4").parent == store.paths.models


def test_import_places_the_file_and_reads_its_header(store: ModelStore, models_dir: Path) -> None:
    imported = store.import_gguf(models_dir / "chat.gguf", "tiny:chat")
    path = Path(imported.path)
    assert path.parent.parent == store.paths.models and path.read_bytes() == (models_dir / "chat.gguf").read_bytes()
    assert imported.architecture == "llama" and imported.size_bytes == path.stat().st_size
    assert len(imported.sha256) == 64
    assert imported.kinds == (SlotKind.CHAT, SlotKind.EMBED)


def test_an_uploaded_blob_is_indexed_under_the_digest_it_is_named_by_without_hashing_it_again(
        store: ModelStore, models_dir: Path) -> None:
    """A blob is named by the digest create_blob checked its bytes against; the name stands in for the hash.
    The blob here is named by a digest its bytes do not have, so the entry shows which one the store used."""
    named = "ab" * 32
    blob = store.paths.home / "blobs" / f"sha256-{named}"
    blob.parent.mkdir(parents=True)
    blob.write_bytes((models_dir / "chat.gguf").read_bytes())
    assert store.import_gguf(blob, "uploaded", sha256=named).sha256 == named


def test_a_digest_claimed_for_any_other_file_is_not_believed(store: ModelStore, models_dir: Path) -> None:
    hashed = store.import_gguf(models_dir / "chat.gguf", "hashed").sha256
    assert store.import_gguf(models_dir / "chat.gguf", "claimed", sha256="ab" * 32).sha256 == hashed
    blob = store.paths.home / "blobs" / f"sha256-{'cd' * 32}"
    blob.parent.mkdir(parents=True)
    blob.write_bytes((models_dir / "chat.gguf").read_bytes())
    assert store.import_gguf(blob, "another-blob", sha256="ab" * 32).sha256 == hashed  # not the name it has


def test_import_recognises_embedding_and_rerank_models(store: ModelStore, models_dir: Path) -> None:
    assert store.import_gguf(models_dir / "embed.gguf", "e").kinds == (SlotKind.EMBED,)
    assert store.import_gguf(models_dir / "rerank.gguf", "r").kinds == (SlotKind.RERANK,)


def test_import_refuses_a_file_that_is_not_gguf(store: ModelStore, tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"<html>not found</html>")
    with pytest.raises(GGUFError, match="not a GGUF"):
        store.import_gguf(bogus, "bogus")
    assert store.list() == []


def test_import_refuses_a_truncated_gguf(store: ModelStore, models_dir: Path, tmp_path: Path) -> None:
    data = (models_dir / "chat.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError, match="truncated"):
        store.import_gguf(cut, "cut")


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


MALFORMED = {
    "bad version": (lambda d: patched(d, VERSION_AT, "I", 7), "GGUF version 7 is not supported"),
    "zero alignment": (alignment_zero, "general.alignment is 0"),
    "kv count past the end": (lambda d: patched(d, KV_COUNT_AT, "Q", 2**40), "more than a"),
    "truncated": (lambda d: d[: len(d) - 100], "truncated"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_import_of_a_malformed_gguf_adds_nothing_to_the_store(store: ModelStore, tmp_path: Path, case: str) -> None:
    patch, message = MALFORMED[case]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(patch(write_small(tmp_path / "good.gguf")))
    with pytest.raises(GGUFError, match=message):
        store.import_gguf(bad, "bad")
    assert store.list() == [] and not store.paths.index.exists()
    assert not store.model_dir("bad").exists() and files_under(store.paths.models) == []


def test_an_import_refused_after_placing_the_file_removes_it(store: ModelStore, models_dir: Path) -> None:
    store.paths.home.mkdir(parents=True)
    store.paths.index.write_text("{not json")
    with pytest.raises(StoreError, match="damaged"):
        store.import_gguf(models_dir / "chat.gguf", "tiny:chat")
    assert not store.model_dir("tiny:chat").exists() and files_under(store.paths.models) == []


def test_import_of_a_missing_file_names_it(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        store.import_gguf(tmp_path / "nope.gguf", "nope")


WRITER = """
import sys
from pathlib import Path
from catalog.store import ModelStore
from manager.config import Paths
from manager.protocol import ModelEntry
store = ModelStore(Paths(Path(sys.argv[1])))
i = 0
while True:
    i += 1
    store.add(ModelEntry(name=f"m{i % 50}", path="/x.gguf", size_bytes=i, source="x" * 2000))
"""


def test_index_survives_a_writer_killed_mid_write(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites the index in a loop: every kill leaves a whole index."""
    home = tmp_path / "home"
    store = ModelStore(Paths(home))
    store.add(entry("keep"))
    rng = random.Random(1)
    for _ in range(8):
        before = store.paths.index.stat().st_mtime_ns
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(home)])
        deadline = time.monotonic() + 20
        while store.paths.index.stat().st_mtime_ns == before:
            assert time.monotonic() < deadline, "the writer never wrote"
            time.sleep(0.005)  # poll until the writer has replaced the index once
        time.sleep(rng.uniform(0, 0.05))  # wait a random moment so the kill lands mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        models = {m.name for m in store.list()}  # parses: never a half-written file
        assert "keep" in models and len(models) > 1
