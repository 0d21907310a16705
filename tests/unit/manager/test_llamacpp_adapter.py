"""The llama.cpp adapter's memory plan and command line, from a real GGUF header."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from catalog.gguf_info import GGUFInfo
from catalog.store import ModelStore
from manager.config import LlamaCppSettings, Paths, Settings
from manager.engines.llamacpp import LlamaCppAdapter, builtin_template, has_chat_template
from manager.engines.base import EngineMissing
from manager.protocol import GpuInfo, HardwareSnapshot, ModelEntry, SlotKind

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
    assert "--pooling" not in argv("embed", SlotKind.EMBED)  # the model's own pooling applies
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
        return a.command(Path("/opt/llama-server"), entries[name], kind, 4321, a.plan(entries[name], kind, cpu_host(), 0))

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
