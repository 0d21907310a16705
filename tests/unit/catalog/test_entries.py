"""The curated catalog: its data files, the name matcher, pull keys, user overrides and the memory fit."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from catalog.entries import (
    CatalogError,
    UnknownModel,
    estimate_bytes,
    fits,
    hub_model_name,
    is_hub_name,
    load_catalog,
    pull_key,
    split_hub_name,
)
from manager.protocol import SlotKind

ORIGINAL_SHORTCUTS = (
    "qwen3:8b:4bit", "qwen3.5:4b:4bit", "qwen3.5:9b:4bit", "gemma3:4b:4bit", "gemma3:12b:4bit",
    "llama3.1:8b:4bit", "llama4:17b:4bit:scout", "phi4:4b:4bit", "deepseek_r1:8b:4bit:distill-qwen",
)  # fmt: skip
REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
NEEDS = {"chat": {"chat", "completion"}, "vision": {"vision"}, "embedding": {"embedding"}, "rerank": {"rerank"}}

CUSTOM = """
[[model]]
name = "qwen3:8b"
kind = "chat"
description = "my own build"
capabilities = ["chat"]
context_length = 8192
default_quant = "Q8_0"
[model.gguf]
repo = "me/Qwen3-8B-Mine-GGUF"
quants.Q8_0 = { file = "mine-Q8_0.gguf", size_bytes = 8000000000 }

[[model]]
name = "tiny:1m"
kind = "embedding"
description = "a test embedder"
capabilities = ["embedding"]
context_length = 512
default_quant = "F16"
[model.gguf]
repo = "me/tiny-GGUF"
quants.F16 = { file = "tiny-f16.gguf", size_bytes = 2000000 }
"""


def write_user_file(home: Path, text: str, name: str = "mine.toml") -> Path:
    path = home / "catalog" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_catalog_holds_the_original_shortcuts_and_enough_of_every_kind() -> None:
    catalog = load_catalog()
    counts = Counter(e.kind for e in catalog.entries())
    assert counts["chat"] >= 12 and counts["embedding"] >= 7 and counts["vision"] >= 3 and counts["rerank"] >= 5
    for name in ORIGINAL_SHORTCUTS:
        found = catalog.match(name)
        assert found is not None, name
        assert found.canonical == name and found.quant == "Q4_K_M"
    families = {e.name.split(":")[0] for e in catalog.entries()}
    assert {"nomic-embed-text", "qwen3-embedding", "bge-m3", "snowflake-arctic-embed-l"} <= families
    assert {"bge-reranker-v2-m3", "jina-reranker-v2", "qwen3-reranker"} <= families
    assert {"qwen2.5-vl", "qwen3-vl"} <= families and catalog.match("gemma3:4b:vision") is not None


def test_every_entry_is_complete_and_consistent() -> None:
    catalog = load_catalog()
    for e in catalog.entries():
        assert e.description and e.context_length > 0, e.name
        assert NEEDS[e.kind] & set(e.capabilities), e.name
        if e.kind in ("embedding", "rerank"):
            assert not {"chat", "vision", "tools", "thinking"} & set(e.capabilities), e.name
        assert e.default_quant in e.quants and e.size(e.default_quant) > 0, e.name
        if e.gguf is not None:
            assert REPO.fullmatch(e.gguf.repo), e.name
            assert all(q.size_bytes > 0 and q.file.endswith(".gguf") for q in e.gguf.quants.values()), e.name
        if e.kind == "vision":
            assert e.gguf is not None and e.gguf.mmproj.endswith(".gguf") and e.gguf.mmproj_bytes > 0, e.name
        assert all(repo.startswith("mlx-community/") for repo in e.mlx.values()), e.name
        assert not e.safetensors or REPO.fullmatch(e.safetensors), e.name
        if e.draft:
            draft = catalog.lookup(e.draft)
            assert draft.entry.size(draft.quant) < e.size(e.default_quant), e.name


def test_every_canonical_name_matches_its_own_entry_and_quant() -> None:
    catalog = load_catalog()
    for e in catalog.entries():
        for quant in e.quants:
            found = catalog.lookup(e.canonical(quant))
            assert (found.entry.name, found.quant) == (e.name, quant)


def test_variant_and_quant_are_accepted_in_either_order() -> None:
    catalog = load_catalog()
    a, b = catalog.lookup("llama4:17b:scout:4bit"), catalog.lookup("llama4:17b:4bit:scout")
    assert a == b and a.canonical == "llama4:17b:4bit:scout" and a.entry.name == "llama4:17b:scout"
    assert catalog.lookup("deepseek_r1:8b:distill-qwen:4bit").canonical == "deepseek_r1:8b:4bit:distill-qwen"


def test_case_latest_and_a_missing_quant_are_forgiven() -> None:
    catalog = load_catalog()
    for name in ("QWEN3:8B", "qwen3:8b", "qwen3:8b:latest", "Qwen3:8b:4BIT", " qwen3:8b:4bit "):
        assert catalog.lookup(name).canonical == "qwen3:8b:4bit", name
    assert catalog.lookup("bge-m3").entry.name == "bge-m3:567m"  # a family with one entry, as Ollama names it


def test_gguf_labels_pick_a_quant_and_name_it_canonically() -> None:
    catalog = load_catalog()
    eight = catalog.lookup("qwen3:8b:q8_0")
    assert (eight.quant, eight.canonical, eight.token) == ("Q8_0", "qwen3:8b:8bit", "8bit")
    assert eight.mlx_repo == "mlx-community/Qwen3-8B-8bit"
    xl = catalog.lookup("qwen3:8b:UD-Q4_K_XL")
    assert (xl.quant, xl.canonical) == ("UD-Q4_K_XL", "qwen3:8b:ud-q4_k_xl")
    assert catalog.lookup("qwen3:8b:q4").quant == "Q4_K_M"
    assert catalog.lookup("jina-reranker-v2:multilingual:f16").quant == "F16"
    assert catalog.lookup("llama4:17b:scout").mlx_repo == "mlx-community/Llama-4-Scout-17B-16E-Instruct-4bit"


def test_a_near_miss_suggests_the_closest_names() -> None:
    catalog = load_catalog()
    assert catalog.match("qwen3:7b") is None
    with pytest.raises(UnknownModel) as e:
        catalog.lookup("qwen3:7b")
    message = str(e.value)
    assert message.startswith("unknown model 'qwen3:7b': did you mean ") and "`lmforge catalog`" in message
    assert "qwen3:8b:4bit" in message and "qwen3:4b:4bit" in message
    assert catalog.suggest("gemma3:4:vision")[0] == "gemma3:4b:4bit:vision"
    assert catalog.suggest("llama4:17b:4bit:scuot")[0] == "llama4:17b:4bit:scout"
    assert catalog.suggest("zzzzzz") == []


def test_a_quant_the_entry_lacks_names_the_quants_it_has() -> None:
    catalog = load_catalog()
    assert catalog.match("qwen3.5:4b:q2_k") is None
    with pytest.raises(UnknownModel, match=r"qwen3\.5:4b has no quant 'q2_k'; it has 4bit, 8bit$"):
        catalog.lookup("qwen3.5:4b:q2_k")
    with pytest.raises(UnknownModel, match="has no quant '3bit'"):
        catalog.lookup("qwen3:8b:3bit")
    with pytest.raises(UnknownModel, match="has no quant"):
        catalog.lookup("qwen3:8b").entry.size("q2_k")


def test_hub_names_are_recognised_and_never_match_a_shortcut() -> None:
    catalog = load_catalog()
    for name in ("unsloth/Qwen3-8B-GGUF", "hf.co/unsloth/Qwen3-8B-GGUF:Q4_K_M", "huggingface.co/o/r"):
        assert is_hub_name(name) and catalog.match(name) is None, name
    assert not is_hub_name("qwen3:8b") and not is_hub_name("/models/x.gguf") and not is_hub_name("./x.gguf")


def test_pull_keys_are_the_same_for_every_spelling_of_one_model() -> None:
    hub = {pull_key(n) for n in (
        "unsloth/Qwen3-8B-GGUF:Q4_K_M", "hf.co/unsloth/qwen3-8b-gguf:q4_k_m",
        "huggingface.co/Unsloth/Qwen3-8B-GGUF:Q4_K_M", "https://huggingface.co/unsloth/Qwen3-8B-GGUF:Q4_K_M",
        " unsloth/Qwen3-8B-GGUF:q4_k_m ", "https://www.huggingface.co/unsloth/Qwen3-8B-GGUF:Q4_K_M",
        "HTTP://HF.CO/unsloth/Qwen3-8B-GGUF:q4_k_m",
    )}  # fmt: skip
    assert hub == {"hf:unsloth/qwen3-8b-gguf:q4_k_m"}
    bare = {pull_key("hf.co/unsloth/Qwen3-8B-GGUF"), pull_key("unsloth/qwen3-8b-gguf:latest"),
            pull_key("www.huggingface.co/unsloth/Qwen3-8B-GGUF:latest")}
    assert bare == {"hf:unsloth/qwen3-8b-gguf"}
    assert pull_key("o/r:fp16") == pull_key("o/r:F16")
    assert pull_key("o/r@v2:Q4_K_M") == "hf:o/r@v2:q4_k_m" != pull_key("o/r:Q4_K_M")
    assert pull_key("o/r:Model-Q8_0.gguf") == "hf:o/r:model-q8_0.gguf"
    assert pull_key("unsloth/Qwen3-8B-GGUF:Q8_0") != pull_key("unsloth/Qwen3-8B-GGUF:Q4_K_M")
    short = {pull_key(n) for n in ("qwen3:8b", "QWEN3:8B:latest", "qwen3:8b:4bit", "qwen3:8b:q4_k_m")}
    assert short == {"qwen3:8b:4bit"}
    assert pull_key("llama4:17b:scout:4bit") == "llama4:17b:4bit:scout"
    with pytest.raises(UnknownModel, match="did you mean .*qwen3:8b:4bit"):  # refused at once, with suggestions
        pull_key("qwen3:9b")


def test_a_hub_model_has_one_stored_name_whatever_the_spelling() -> None:
    for typed in ("hf.co/o/R:latest", "https://huggingface.co/o/R", "www.huggingface.co/o/R", "o/R"):
        assert hub_model_name(*split_hub_name(typed)) == "o/R"
    assert hub_model_name(*split_hub_name("hf.co/o/R:q4_k_m")) == "o/R:Q4_K_M"
    assert hub_model_name(*split_hub_name("o/R@v1:fp16")) == "o/R@v1:F16"
    assert hub_model_name(*split_hub_name("o/R:4bit")) == "o/R:4bit"  # a word is resolved to a label by the Hub
    assert hub_model_name(*split_hub_name("o/R:sub/M-Q8_0.gguf")) == "o/R:sub/M-Q8_0.gguf"


def test_a_match_says_whether_its_quant_was_asked() -> None:
    catalog = load_catalog()
    assert not catalog.lookup("qwen3:8b").explicit
    assert catalog.lookup("qwen3:8b:4bit").explicit
    assert catalog.lookup("qwen3:8b:q8_0").explicit


def test_a_user_file_replaces_entries_by_name_and_adds_new_ones(tmp_path: Path) -> None:
    path = write_user_file(tmp_path, CUSTOM)
    catalog = load_catalog(tmp_path)
    mine = catalog.lookup("qwen3:8b")
    assert (mine.entry.gguf.repo, mine.canonical) == ("me/Qwen3-8B-Mine-GGUF", "qwen3:8b:8bit")
    assert catalog.lookup("tiny:1m").entry.kind == "embedding"
    assert len(catalog.entries()) == len(load_catalog().entries()) + 1
    assert load_catalog().lookup("qwen3:8b").entry.gguf.repo == "unsloth/Qwen3-8B-GGUF"  # the bundled one is kept
    assert load_catalog(tmp_path) is catalog  # cached while nothing changed

    path.write_text(CUSTOM.replace("me/tiny-GGUF", "me/tiny2-GGUF"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_catalog(tmp_path).lookup("tiny:1m").entry.gguf.repo == "me/tiny2-GGUF"


@pytest.mark.parametrize(
    "broken, complaint",
    [
        ('[[model]]\nname = "x:1b"\n', "missing field 'kind'"),
        ("[[model]\nname = 1\n", "cannot read the catalog file"),
        (CUSTOM.replace('default_quant = "F16"', 'default_quant = "Q4_K_M"'), "'Q4_K_M' is not among F16"),
        (CUSTOM.replace("context_length = 512", "context_length = 512\ncontxt = 1"), "unknown field contxt"),
        (CUSTOM.replace('capabilities = ["embedding"]', 'capabilities = ["chat"]'), "needs capability embedding"),
        (CUSTOM.replace('repo = "me/tiny-GGUF"', 'repo = "tiny-GGUF"'), "is not owner/name"),
        (CUSTOM.replace("size_bytes = 2000000", "size_bytes = 0"), "size_bytes above 0"),
        (CUSTOM.replace('name = "tiny:1m"', 'name = "tiny:1m:4bit"'), "without a quant"),
        (CUSTOM.replace('default_quant = "F16"', 'default_quant = "F16"\ndraft = "nope:1b"'), "draft 'nope:1b'"),
    ],
)
def test_a_broken_user_file_is_refused_naming_the_file_and_entry(tmp_path: Path, broken: str, complaint: str) -> None:
    path = write_user_file(tmp_path, broken, name="broken.toml")
    with pytest.raises(CatalogError) as e:
        load_catalog(tmp_path)
    assert str(path) in str(e.value) and complaint in str(e.value)
    if "tiny" in broken and "cannot read" not in complaint:
        assert "'tiny:1m" in str(e.value)


def test_a_vision_entry_counts_its_mmproj_and_kinds_follow_the_kind() -> None:
    catalog = load_catalog()
    vl = catalog.lookup("qwen2.5-vl:7b").entry
    assert vl.size("4bit") == vl.gguf.quants["Q4_K_M"].size_bytes + vl.gguf.mmproj_bytes
    assert vl.size("q8_0") > vl.size("Q4_K_M")
    assert catalog.lookup("bge-m3").entry.kinds == (SlotKind.EMBED,)
    assert catalog.lookup("qwen3-reranker:0.6b").entry.kinds == (SlotKind.RERANK,)
    assert catalog.lookup("qwen3:8b").entry.kinds[0] == SlotKind.CHAT


def test_fits_leaves_a_margin_over_the_weights() -> None:
    size = 5_000_000_000
    need = estimate_bytes(size)
    assert need > size * 1.1
    assert fits(size, need) and not fits(size, need - 1)
    assert not fits(size, size)  # the weights alone leave nothing for the KV cache
    assert estimate_bytes(2 * size) > need
