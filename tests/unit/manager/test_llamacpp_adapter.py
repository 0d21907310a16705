"""The llama.cpp adapter's memory plan and command line, from a real GGUF header."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from catalog.gguf_info import GGUFInfo, read_gguf_info
from catalog.store import ModelStore
from manager.config import ConfigError, LlamaCppSettings, Paths, Settings, decode_settings
from manager.engines import llamacpp_build
from manager.engines.llamacpp import LlamaCppAdapter, builtin_template, embedding_pooling, has_chat_template
from manager.engines.llamacpp_draft import DraftError, unusable
from manager.engines.llamacpp_gpus import CUDA_CONTEXT
from manager.engines.base import EngineMissing
from manager.protocol import GpuInfo, HardwareSnapshot, ModelEntry, SlotKind
from tests.support.gguf_patches import write_small

GiB = 1024**3


def cpu_host() -> HardwareSnapshot:
    return HardwareSnapshot(os="linux", arch="x86_64", cpu_model="cpu", cpu_cores=2, cpu_threads=2,
                            ram_total=16 * GiB, ram_available=8 * GiB)


def gpu_host() -> HardwareSnapshot:
    gpu = GpuInfo(index=0, vendor="nvidia", name="H100", vram_total=80 * GiB, vram_free=80 * GiB)
    return HardwareSnapshot(os="linux", arch="x86_64", cpu_model="cpu", cpu_cores=2, cpu_threads=2,
                            ram_total=16 * GiB, ram_available=8 * GiB, gpus=(gpu,))


@pytest.fixture
def entries(tmp_path: Path, models_dir: Path) -> dict[str, ModelEntry]:
    store = ModelStore(Paths(tmp_path))
    return {n: store.import_gguf(models_dir / f"{n}.gguf", n) for n in ("chat", "embed", "rerank")}


def adapter(tmp_path: Path, **llama: object) -> LlamaCppAdapter:
    return LlamaCppAdapter(Settings(llama_cpp=LlamaCppSettings(**llama)), Paths(tmp_path))  # type: ignore[arg-type]


def test_kv_cache_follows_the_header_and_the_context_we_pass(tmp_path: Path, entries: dict) -> None:
    small = adapter(tmp_path, ctx_size=1024).plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0)
    large = adapter(tmp_path, ctx_size=4096).plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0)
    # 2 layers x 2 KV heads x (16 + 16) dims x 2 bytes per token.
    assert small.kv_cache == 2 * 1024 * 2 * 32 * 2 and large.kv_cache == 4 * small.kv_cache
    assert small.weights == entries["chat"].size_bytes and small.total > small.weights + small.kv_cache


def test_context_is_capped_by_the_models_training_context(tmp_path: Path, entries: dict) -> None:
    plan = adapter(tmp_path, ctx_size=10**6).plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0)
    assert plan.ctx_size == entries["chat"].context_length


def test_cpu_hosts_offload_nothing(tmp_path: Path, entries: dict) -> None:
    plan = adapter(tmp_path).plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0)
    argv = adapter(tmp_path).command(Path("/bin/llama-server"), entries["chat"], SlotKind.CHAT, 5000, plan)
    assert plan.gpu_layers == 0 and "--n-gpu-layers" not in argv


def test_gpu_hosts_offload_every_layer_when_it_fits(tmp_path: Path, entries: dict) -> None:
    plan = adapter(tmp_path).plan(entries["chat"], SlotKind.CHAT, gpu_host(), 10 * GiB)
    assert plan.gpu_layers == 3  # 2 blocks + the output layer


def test_gpu_hosts_offload_part_when_the_vram_budget_is_short(tmp_path: Path, entries: dict) -> None:
    a = adapter(tmp_path)
    full = a.plan(entries["chat"], SlotKind.CHAT, gpu_host(), 10 * GiB)
    per_layer = full.weights / 3
    budget = int(full.kv_cache + full.compute + per_layer * 1.5)
    partial = a.plan(entries["chat"], SlotKind.CHAT, gpu_host(), budget)
    assert partial.gpu_layers == 1 and partial.weights < full.weights
    none = a.plan(entries["chat"], SlotKind.CHAT, gpu_host(), int(full.kv_cache))
    assert none.gpu_layers == 0 and none.weights == 0


def test_command_line_per_kind(tmp_path: Path, entries: dict) -> None:
    a = adapter(tmp_path, parallel=2, extra_args=["--threads", "3"])
    binary = Path("/opt/llama-server")

    def argv(name: str, kind: SlotKind) -> list[str]:
        return a.command(binary, entries[name], kind, 4321, a.plan(entries[name], kind, cpu_host(), 0))

    chat = argv("chat", SlotKind.CHAT)
    assert chat[:3] == [str(binary), "--model", entries["chat"].path]
    assert ["--host", "127.0.0.1"] == chat[3:5] and chat[chat.index("--port") + 1] == "4321"
    assert chat[chat.index("--alias") + 1] == "chat" and "--kv-unified" in chat and chat[-2:] == ["--threads", "3"]
    embed = argv("chat", SlotKind.EMBED)
    assert "--embeddings" in embed and embed[embed.index("--pooling") + 1] == "mean"
    declared = argv("embed", SlotKind.EMBED)  # the model's own pooling (mean), passed explicitly
    assert declared[declared.index("--pooling") + 1] == "mean"
    assert "--reranking" in argv("rerank", SlotKind.RERANK)


def test_catalog_options_become_the_engines_default_sampling(tmp_path: Path, entries: dict) -> None:
    a = adapter(tmp_path)
    entry = msgspec.structs.replace(entries["chat"], options={"temperature": 0.6, "top_k": 20, "num_gpu": "x",
                                                              "min_p": 0.0, "think": True})
    chat = a.command(Path("/bin/llama-server"), entry, SlotKind.CHAT, 1, a.plan(entry, SlotKind.CHAT, cpu_host(), 0))
    assert chat[chat.index("--temp") + 1] == "0.6" and chat[chat.index("--top-k") + 1] == "20"
    assert chat[chat.index("--min-p") + 1] == "0.0" and "x" not in chat and "True" not in chat
    embed = a.command(Path("/bin/llama-server"), entry, SlotKind.EMBED, 1, a.plan(entry, SlotKind.EMBED, cpu_host(), 0))
    assert "--temp" not in embed  # sampling means nothing to a pooling engine


def test_only_a_file_without_a_template_is_told_its_architectures_built_in_one() -> None:
    def header(arch: str, template: str = "") -> GGUFInfo:
        return GGUFInfo(Path("m.gguf"), 0, 3, {"general.architecture": arch, "tokenizer.chat_template": template})

    assert builtin_template(header("gemma3")) == "gemma" and has_chat_template(header("gemma3"))
    assert builtin_template(header("gemma3", "{{ messages }}")) is None  # its own wins
    assert builtin_template(header("llama")) is None and not has_chat_template(header("llama"))
    assert has_chat_template(header("llama", "{{ messages }}"))


def test_missing_configured_binary_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(EngineMissing, match="does not exist"):
        adapter(tmp_path, server=str(tmp_path / "nope")).find_binary()


def test_pooling_slots_run_without_a_host_prompt_cache(tmp_path: Path, entries: dict) -> None:
    # llama-server's default cache (8 GiB) grew an embedding engine by 2 MiB per batch, without bound.
    a = adapter(tmp_path)

    def argv(name: str, kind: SlotKind) -> list[str]:
        plan = a.plan(entries[name], kind, cpu_host(), 0)
        return a.command(Path("/opt/llama-server"), entries[name], kind, 4321, plan)

    for name, kind in (("chat", SlotKind.EMBED), ("embed", SlotKind.EMBED), ("rerank", SlotKind.RERANK)):
        args = argv(name, kind)
        assert args[args.index("--cache-ram") + 1] == "0"
    chat = argv("chat", SlotKind.CHAT)
    assert chat[chat.index("--cache-ram") + 1] == "256"


def test_the_plan_says_what_grows_after_ready(tmp_path: Path, entries: dict) -> None:
    plan = adapter(tmp_path).plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0)
    # The host prompt cache fills up to --cache-ram after ready; the KV cache is resident from load on.
    assert 256 * 1024**2 < plan.growth < plan.total - plan.weights - plan.kv_cache
    assert adapter(tmp_path, cache_ram_mb=0).plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0).growth < 32 * 1024**2
    on_gpu = adapter(tmp_path).plan(entries["chat"], SlotKind.CHAT, gpu_host(), 10 * GiB)
    assert on_gpu.growth == plan.growth and 0 < on_gpu.growth_gpu < plan.growth


def test_an_asked_context_sizes_the_plan_and_is_capped_by_the_trained_one(tmp_path: Path, entries: dict) -> None:
    a = adapter(tmp_path, ctx_size=1024)
    default = a.plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0)
    asked = a.plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0, num_ctx=4096)
    assert asked.ctx_size == 4096 and asked.kv_cache == 4 * default.kv_cache  # the estimate holds the larger KV
    assert a.plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0, num_ctx=512).ctx_size == 1024  # never less
    capped = a.plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0, num_ctx=10**6)
    assert capped.ctx_size == capped.ctx_max == entries["chat"].context_length
    argv = a.command(Path("/opt/llama-server"), entries["chat"], SlotKind.CHAT, 4321, asked)
    assert argv[argv.index("--ctx-size") + 1] == "4096"


def test_the_cores_budget_sets_both_thread_counts_and_zero_leaves_the_engines_own(tmp_path: Path,
                                                                                 entries: dict) -> None:
    a = adapter(tmp_path)
    for kind, name in ((SlotKind.CHAT, "chat"), (SlotKind.EMBED, "embed")):
        plan = a.plan(entries[name], kind, cpu_host(), 0)
        argv = a.command(Path("/bin/llama-server"), entries[name], kind, 1, plan, threads=3)
        assert argv[argv.index("--threads") + 1] == argv[argv.index("--threads-batch") + 1] == "3"
        plain = a.command(Path("/bin/llama-server"), entries[name], kind, 1, plan)
        assert "--threads" not in plain and "--threads-batch" not in plain  # an engine on a GPU keeps its own


# --- pooling ---

def test_embedding_slots_pool_as_the_model_declares_and_by_mean_when_it_declares_nothing_usable() -> None:
    def header(pooling: int | None) -> GGUFInfo:
        extra = {} if pooling is None else {"llama.pooling_type": pooling}
        return GGUFInfo(Path("m.gguf"), 0, 3, {"general.architecture": "llama", **extra})

    # llama.cpp's enum: 0 none, 1 mean, 2 cls, 3 last, 4 rank; --pooling takes none, mean, cls, last and rank.
    assert [embedding_pooling(header(p)) for p in (1, 2, 3)] == ["mean", "cls", "last"]
    # No pooling (a chat model), none (token embeddings, which /v1/embeddings cannot answer), rank, unknown: mean.
    assert [embedding_pooling(header(p)) for p in (None, 0, 4, 9)] == ["mean"] * 4


# --- speculative decoding ---

@pytest.fixture
def draft_store(tmp_path: Path, models_dir: Path, entries: dict) -> ModelStore:
    store = ModelStore(Paths(tmp_path))
    store.import_gguf(models_dir / "cycle.gguf", "tiny:draft")  # the same tokenizer as the chat model
    return store


def test_a_configured_draft_is_passed_and_its_memory_counted(tmp_path: Path, entries: dict,
                                                             draft_store: ModelStore) -> None:
    plain = adapter(tmp_path).plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0)
    a = adapter(tmp_path, drafts={"chat": "tiny:draft"})
    plan = a.plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0)
    draft = draft_store.get("tiny:draft")
    assert draft is not None and plan.draft == draft.path
    # Its weights, a KV cache of the target's shape (same layers, heads and context here) and its own graph.
    assert plan.weights == plain.weights + draft.size_bytes and plan.kv_cache == 2 * plain.kv_cache
    assert plan.compute > plain.compute and plan.growth > plain.growth
    argv = a.command(Path("/bin/llama-server"), entries["chat"], SlotKind.CHAT, 1, plan)
    assert argv[argv.index("--model-draft") + 1] == draft.path
    assert argv[argv.index("--spec-type") + 1] == "draft-simple"  # without it llama-server drafts nothing
    assert "--gpu-layers-draft" not in argv  # a CPU host


def test_a_draft_is_found_by_a_name_the_store_resolves_and_serves_chat_only(tmp_path: Path, entries: dict,
                                                                          draft_store: ModelStore) -> None:
    a = adapter(tmp_path, drafts={"chat:latest": "tiny:draft"})
    assert a.plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0).draft.endswith(".gguf")
    embed = a.plan(entries["chat"], SlotKind.EMBED, cpu_host(), 0)
    assert embed.draft == "" and "--model-draft" not in a.command(Path("/x"), entries["chat"], SlotKind.EMBED, 1, embed)
    unrelated = adapter(tmp_path, drafts={"other": "tiny:draft"})
    assert unrelated.plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0).draft == ""


def test_a_configured_draft_that_is_not_installed_fails_the_plan_saying_how_to_fix_it(tmp_path: Path,
                                                                                     entries: dict) -> None:
    with pytest.raises(DraftError, match=r"'qwen3:0\.6b'.*not installed: `lmforge pull qwen3:0\.6b`"):
        adapter(tmp_path, drafts={"chat": "qwen3:0.6b"}).plan(entries["chat"], SlotKind.CHAT, cpu_host(), 0)


def test_the_catalog_draft_is_used_when_installed_and_skipped_when_not(tmp_path: Path, entries: dict,
                                                                      models_dir: Path) -> None:
    # The catalog names qwen3:0.6b as qwen3:8b's draft; the store resolves the shortcut to the canonical name.
    target = msgspec.structs.replace(entries["chat"], catalog="qwen3:8b:4bit")
    assert adapter(tmp_path).plan(target, SlotKind.CHAT, cpu_host(), 0).draft == ""
    draft = ModelStore(Paths(tmp_path)).import_gguf(models_dir / "cycle.gguf", "qwen3:0.6b:4bit")
    assert adapter(tmp_path).plan(target, SlotKind.CHAT, cpu_host(), 0).draft == draft.path


def test_a_draft_llama_server_would_refuse_is_named_with_the_reason(tmp_path: Path, models_dir: Path) -> None:
    target = read_gguf_info(models_dir / "chat.gguf")  # gpt2 tokenizer, 269 tokens, BOS added

    def draft(name: str, extra) -> ModelEntry:  # type: ignore[no-untyped-def]
        write_small(tmp_path / f"{name}.gguf", extra)
        return ModelEntry(name=name, path=str(tmp_path / f"{name}.gguf"))

    def gpt2(tokens: int, bos: int = 266):  # type: ignore[no-untyped-def]
        def add(w) -> None:  # type: ignore[no-untyped-def]
            w.add_tokenizer_model("gpt2")
            w.add_token_list([f"t{i}" for i in range(tokens)])
            w.add_bos_token_id(bos)
            w.add_add_bos_token(True)
        return add

    assert unusable(draft("same", gpt2(269 + 128)), target) == ""
    assert "tokenizer is 'llama'" in unusable(draft("spm", lambda w: w.add_tokenizer_model("llama")), target)
    assert "398 tokens, the model's 269" in unusable(draft("far", gpt2(269 + 129)), target)  # llama.cpp's limit: 128
    assert "bos token" in unusable(draft("bos", gpt2(269, bos=1)), target)
    assert "mlx model" in unusable(ModelEntry(name="m", path=str(tmp_path), format="mlx"), target)
    assert "cannot be read" in unusable(ModelEntry(name="gone", path=str(tmp_path / "gone.gguf")), target)


def test_drafts_in_config_must_name_two_different_models() -> None:
    ok = decode_settings('[llama_cpp]\ndrafts = { "qwen3:8b" = "qwen3:0.6b" }\n')
    ok.validate()
    assert ok.llama_cpp.drafts == {"qwen3:8b": "qwen3:0.6b"}
    for drafts, message in (({"qwen3:8b": ""}, "both must name a model"), ({" ": "x"}, "both must name a model"),
                            ({"m": "m"}, "'m' cannot be its own draft"), ({"m:latest": "m"}, "its own draft")):
        with pytest.raises(ConfigError, match=message):
            Settings(llama_cpp=LlamaCppSettings(drafts=drafts)).validate()


# --- GPU hosts ---

def gpu_host_with(*free: int) -> HardwareSnapshot:
    gpus = tuple(GpuInfo(index=i, vendor="nvidia", name="H100", vram_total=80 * GiB, vram_free=f)
                 for i, f in enumerate(free))
    return msgspec.structs.replace(gpu_host(), gpus=gpus)


def test_a_gpu_host_offloads_the_draft_whole_when_it_fits_and_says_so_when_it_does_not(
        tmp_path: Path, entries: dict, draft_store: ModelStore) -> None:
    a = adapter(tmp_path, drafts={"chat": "tiny:draft"})
    binary = Path("/bin/llama-server")
    plan = a.plan(entries["chat"], SlotKind.CHAT, gpu_host(), 10 * GiB)
    assert (plan.gpu_layers, plan.draft_gpu_layers) == (3, 3)  # 2 blocks + the output layer, each
    draft = draft_store.get("tiny:draft")
    assert draft is not None and plan.weights == entries["chat"].size_bytes + draft.size_bytes
    argv = a.command(binary, entries["chat"], SlotKind.CHAT, 1, plan)
    assert argv[argv.index("--gpu-layers-draft") + 1] == "3"
    # A budget too small for even the draft: nothing offloaded, and the engine is told so rather than fitting
    # layers of its own choosing into VRAM the budget did not count.
    small = a.plan(entries["chat"], SlotKind.CHAT, gpu_host(), int(plan.kv_cache // 4))
    assert (small.gpu_layers, small.draft_gpu_layers, small.weights) == (0, 0, 0)
    argv = a.command(binary, entries["chat"], SlotKind.CHAT, 1, small)
    assert argv[argv.index("--n-gpu-layers") + 1] == "0" and argv[argv.index("--gpu-layers-draft") + 1] == "0"


def test_several_gpus_get_a_split_and_a_pin_through_the_environment(tmp_path: Path, entries: dict,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    a = adapter(tmp_path)
    need = a.plan(entries["chat"], SlotKind.CHAT, gpu_host(), 10 * GiB).total

    def free_for(room: float) -> int:  # the free VRAM whose usable part is `room` of the load
        return int((need * room + CUDA_CONTEXT) / Settings().memory_fraction) + 1

    # Neither GPU holds the load alone: spread, more on the GPU with more free.
    split = a.plan(entries["chat"], SlotKind.CHAT, gpu_host_with(free_for(0.4), free_for(0.8)), 10 * GiB)
    assert split.gpus == (0, 1) and split.split[1] > split.split[0]
    argv = a.command(Path("/bin/llama-server"), entries["chat"], SlotKind.CHAT, 1, split)
    assert argv[argv.index("--tensor-split") + 1] == f"{split.split[0]:g},{split.split[1]:g}"
    assert argv[argv.index("--main-gpu") + 1] == "1"
    assert a.environment(split) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1"}
    # It fits on the second: pinned there, nothing to split.
    pinned = a.plan(entries["chat"], SlotKind.CHAT, gpu_host_with(free_for(0.4), free_for(1.2)), 10 * GiB)
    assert pinned.gpus == (1,) and a.environment(pinned)["CUDA_VISIBLE_DEVICES"] == "1"
    assert "--tensor-split" not in a.command(Path("/bin/llama-server"), entries["chat"], SlotKind.CHAT, 1, pinned)
    # One GPU: no pin, no split.
    alone = a.plan(entries["chat"], SlotKind.CHAT, gpu_host(), 10 * GiB)
    assert alone.gpus == () and a.environment(alone) == {}


# --- the engine's build ---

def test_a_gpu_build_is_followed_by_the_cpu_build_to_fall_back_on() -> None:
    nvidia = GpuInfo(index=0, vendor="nvidia", name="H100", vram_total=80 * GiB, vram_free=80 * GiB)
    attempts = llamacpp_build.build_attempts(gpu_host_with(80 * GiB), nvcc=True)
    assert [backend for backend, _ in attempts] == ["cuda", "cpu"]
    [cuda_flag] = llamacpp_build.BACKEND_FLAGS["cuda"]
    assert cuda_flag in attempts[0][1] and cuda_flag not in attempts[1][1]
    assert attempts[0][1] == llamacpp_build.cmake_flags(gpu_host_with(80 * GiB), nvcc=True)[1]
    # The fallback is the very build a host without the GPU gets, so its wheel and binary are shared.
    assert attempts[1] == llamacpp_build.build_attempts(cpu_host(), nvcc=True)[0]
    assert [b for b, _ in llamacpp_build.build_attempts(cpu_host(), nvcc=True)] == ["cpu"]
    no_nvcc = msgspec.structs.replace(cpu_host(), gpus=(nvidia,))
    assert [b for b, _ in llamacpp_build.build_attempts(no_nvcc, nvcc=False)] == ["cpu"]


def installed_build(home: Path, backend: str) -> None:
    """What install() leaves in the home: the build's binary (a placeholder: nothing runs it) and current.json."""
    binary = home / "engines" / "llama.cpp" / f"b1-{backend}" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    (home / "engines" / "llama.cpp" / "current.json").write_text(json.dumps(
        {"binary": str(binary), "version": "b1", "backend": backend, "cmake_args": []}))


def test_the_cpu_build_fallen_back_to_on_a_gpu_host_is_planned_as_on_a_cpu_host(tmp_path: Path,
                                                                               entries: dict) -> None:
    installed_build(tmp_path, "cpu")  # the CUDA build failed; install() fell back to the CPU build
    a = adapter(tmp_path)
    plan = a.plan(entries["chat"], SlotKind.CHAT, gpu_host_with(80 * GiB, 80 * GiB), 10 * GiB)
    assert (plan.gpu_layers, plan.gpu_host, plan.gpus, plan.split) == (0, False, (), ())
    assert plan.weights == entries["chat"].size_bytes  # all of it in RAM
    argv = a.command(Path("/bin/llama-server"), entries["chat"], SlotKind.CHAT, 5000, plan)
    assert "--n-gpu-layers" not in argv and "--tensor-split" not in argv and a.environment(plan) == {}


def test_a_gpu_build_or_a_configured_server_is_planned_on_the_gpu(tmp_path: Path, entries: dict) -> None:
    installed_build(tmp_path, "cuda")
    assert adapter(tmp_path).plan(entries["chat"], SlotKind.CHAT, gpu_host(), 10 * GiB).gpu_layers == 3
    cpu_home = tmp_path / "cpu"
    installed_build(cpu_home, "cpu")
    # A configured llama_cpp.server's build is not known: planned as the host calls for, as before.
    configured = adapter(cpu_home, server="/opt/llama/llama-server")
    assert configured.plan(entries["chat"], SlotKind.CHAT, gpu_host(), 10 * GiB).gpu_layers == 3
