"""The SGLang adapter's memory plan, GPU placement, command line and environment, from real model directories
(config.json and sparse safetensors files of a real model's size); and the [sglang] settings' checks."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import msgspec
import pytest

from manager.config import ConfigError, Paths, Settings, SglangSettings, decode_settings
from manager.engines.base import EngineMissing, MemoryPlan, PlanRefused
from manager.engines.registry import EngineRegistry
from manager.engines.sglang import CUDA_CONTEXT, RUNTIME_PER_GPU, SglangAdapter
from manager.protocol import GpuInfo, HardwareSnapshot, ModelEntry, SlotKind

GiB = 1024**3
PYTHON = Path("/opt/sglang/bin/python")
# Qwen3-8B's shape: 36 layers, 8 KV heads of 128 dims, trained on 40960 tokens.
QWEN3_8B = {"model_type": "qwen3", "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "hidden_size": 4096, "max_position_embeddings": 40960}
QWEN3_KV_PER_TOKEN = 2 * 36 * 8 * 128 * 2  # keys and values, every layer, bf16


def host(*gpus: tuple[int, int], driver: str = "580.65.06", os: str = "linux") -> HardwareSnapshot:
    """A host with NVIDIA GPUs of (total, free) GiB."""
    infos = tuple(GpuInfo(index=i, vendor="nvidia", name="H100", vram_total=total * GiB, vram_free=free * GiB,
                          driver=driver) for i, (total, free) in enumerate(gpus))
    return HardwareSnapshot(os=os, arch="x86_64", cpu_model="cpu", cpu_cores=16, cpu_threads=32,
                            ram_total=256 * GiB, ram_available=200 * GiB, gpus=infos)


def model(tmp_path: Path, config: dict, weights: int, name: str = "qwen3:8b", thinking: bool = False,
          kinds: tuple[SlotKind, ...] = (SlotKind.CHAT,)) -> ModelEntry:
    """A model directory: config.json and its weights as two sparse safetensors shards."""
    directory = tmp_path / name.replace(":", "-")
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    for n, size in enumerate((weights // 2, weights - weights // 2)):
        with (directory / f"model-0000{n + 1}-of-00002.safetensors").open("wb") as f:
            f.truncate(size)
    return ModelEntry(name=name, path=str(directory), format="safetensors", dir=str(directory), kinds=kinds,
                      architecture=str(config.get("model_type", "")), thinking=thinking, size_bytes=weights)


@pytest.fixture(autouse=True)
def every_gpu_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan reads the manager's CUDA_VISIBLE_DEVICES; tests that do not set it see every GPU of their host."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def adapter(tmp_path: Path, **sglang: object) -> SglangAdapter:
    return SglangAdapter(Settings(sglang=SglangSettings(**sglang)), Paths(tmp_path))  # type: ignore[arg-type]


def argv_of(a: SglangAdapter, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot,
            num_ctx: int = 0) -> tuple[MemoryPlan, list[str]]:
    plan = a.plan(entry, kind, hardware, 0, num_ctx)
    return plan, a.command(PYTHON, entry, kind, 4321, plan)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_chat_command_line(tmp_path: Path) -> None:
    entry = model(tmp_path, QWEN3_8B, 16 * GiB)
    a = adapter(tmp_path, parallel=8, context_length=8192, extra_args=["--chunked-prefill-size", "4096"])
    plan, argv = argv_of(a, entry, SlotKind.CHAT, host((80, 80)))
    assert argv[:3] == [str(PYTHON), "-m", "sglang.launch_server"]
    assert flag(argv, "--model-path") == entry.dir and flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--port") == "4321" and flag(argv, "--served-model-name") == "qwen3:8b"
    assert flag(argv, "--context-length") == "8192" == str(plan.ctx_size)
    assert flag(argv, "--tp-size") == "1" and flag(argv, "--max-running-requests") == "8"
    assert "--enable-memory-saver" in argv and "--enable-weights-cpu-backup" in argv  # what parking needs
    assert "--is-embedding" not in argv and "--reasoning-parser" not in argv
    assert argv[-2:] == ["--chunked-prefill-size", "4096"]


def test_embedding_slots_run_as_embedding_models_without_a_reasoning_parser(tmp_path: Path) -> None:
    entry = model(tmp_path, QWEN3_8B, 16 * GiB, thinking=True, kinds=(SlotKind.CHAT, SlotKind.EMBED))
    _, argv = argv_of(adapter(tmp_path), entry, SlotKind.EMBED, host((80, 80)))
    assert "--is-embedding" in argv and "--reasoning-parser" not in argv


@pytest.mark.parametrize(("model_type", "parser"), [("qwen3", "qwen3"), ("qwen3_moe", "qwen3"),
                                                    ("deepseek_v3", "deepseek-r1"), ("qwen2", None)])
def test_thinking_models_of_known_architectures_get_a_reasoning_parser(tmp_path: Path, model_type: str,
                                                                       parser: str | None) -> None:
    a = adapter(tmp_path)
    entry = model(tmp_path, {**QWEN3_8B, "model_type": model_type}, GiB, thinking=True)
    _, argv = argv_of(a, entry, SlotKind.CHAT, host((80, 80)))
    if parser is None:  # an R1 distill on qwen2: its <think> stays inline, for the gateway to split
        assert "--reasoning-parser" not in argv and a.reasoning_for(entry) == "tags"
    else:
        assert flag(argv, "--reasoning-parser") == parser and a.reasoning_for(entry) == "field"
    plain = msgspec.structs.replace(entry, thinking=False)
    assert "--reasoning-parser" not in a.command(PYTHON, plain, SlotKind.CHAT, 1, a.plan(plain, SlotKind.CHAT,
                                                                                          host((80, 80)), 0))


def test_kv_cache_is_planned_in_bf16_for_the_context_capped_by_the_models_own(tmp_path: Path) -> None:
    entry = model(tmp_path, QWEN3_8B, 16 * GiB)
    plan = adapter(tmp_path, context_length=8192).plan(entry, SlotKind.CHAT, host((80, 80)), 0)
    assert plan.kv_cache == QWEN3_KV_PER_TOKEN * 8192 and plan.weights == 16 * GiB
    assert plan.ctx_max == 40960 and plan.gpu_layers == 37  # all in VRAM
    asked = adapter(tmp_path, context_length=8192).plan(entry, SlotKind.CHAT, host((80, 80)), 0, num_ctx=16384)
    assert asked.ctx_size == 16384
    capped, argv = argv_of(adapter(tmp_path, context_length=10**6), entry, SlotKind.CHAT, host((80, 80)))
    assert capped.ctx_size == 40960 and flag(argv, "--context-length") == "40960"


def test_mla_models_keep_one_latent_per_layer(tmp_path: Path) -> None:
    config = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "num_attention_heads": 128,
              "kv_lora_rank": 512, "qk_rope_head_dim": 64, "hidden_size": 7168, "max_position_embeddings": 163840}
    plan = adapter(tmp_path, context_length=4096).plan(model(tmp_path, config, 10 * GiB), SlotKind.CHAT,
                                                       host((80, 80)), 0)
    assert plan.kv_cache == 61 * (512 + 64) * 2 * 4096


def test_one_gpu_when_the_model_fits_one_the_freest(tmp_path: Path) -> None:
    a = adapter(tmp_path, context_length=32768)
    entry = model(tmp_path, QWEN3_8B, 16 * GiB)
    plan, argv = argv_of(a, entry, SlotKind.CHAT, host((80, 30), (80, 70)))
    assert flag(argv, "--tp-size") == "1" and a.environment(plan)["CUDA_VISIBLE_DEVICES"] == "1"
    # SGLang sizes its static pool (weights and KV cache) as the fraction of what is free at its start, after
    # its CUDA context: the plan's share of that, rounded up so that the planned pool fits.
    static = 16 * GiB + QWEN3_KV_PER_TOKEN * 32768
    free = 70 * GiB - CUDA_CONTEXT
    assert flag(argv, "--mem-fraction-static") == f"{math.ceil(static / free * 1000) / 1000:.3f}" == "0.298"
    assert float(flag(argv, "--mem-fraction-static")) * free >= static
    # ...and the KV pool holds the planned context, never more, whatever more is free.
    assert flag(argv, "--max-total-tokens") == "32768" == str(plan.ctx_size)
    assert plan.compute == CUDA_CONTEXT + RUNTIME_PER_GPU and plan.kv_cache == QWEN3_KV_PER_TOKEN * 32768


def test_a_gpu_another_engine_shares_still_holds_the_plan(tmp_path: Path) -> None:
    # 23 GiB of an 80 GiB GPU held by another engine: the plan's share of the whole GPU (0.26) would leave
    # SGLang 0.26 x 56 GiB, less than the 16 GiB of weights alone.
    entry = model(tmp_path, QWEN3_8B, 16 * GiB)
    _, argv = argv_of(adapter(tmp_path, context_length=32768), entry, SlotKind.CHAT, host((80, 57)))
    static = 16 * GiB + QWEN3_KV_PER_TOKEN * 32768
    assert float(flag(argv, "--mem-fraction-static")) * (57 * GiB - CUDA_CONTEXT) >= static


def test_memory_an_eviction_frees_at_the_start_does_not_grow_the_kv_pool(tmp_path: Path) -> None:
    # Planned while another engine, about to be evicted, holds most of the GPU: the fraction is at the cap, and
    # --max-total-tokens keeps SGLang's KV pool to the plan once the GPU is free.
    entry = model(tmp_path, QWEN3_8B, 16 * GiB)
    plan, argv = argv_of(adapter(tmp_path, context_length=8192), entry, SlotKind.CHAT, host((80, 10)))
    assert flag(argv, "--mem-fraction-static") == "0.900" and flag(argv, "--max-total-tokens") == "8192"
    assert plan.kv_cache == QWEN3_KV_PER_TOKEN * 8192


def test_two_gpus_when_one_cannot_hold_it(tmp_path: Path) -> None:
    a = adapter(tmp_path, context_length=8192)
    entry = model(tmp_path, QWEN3_8B, 30 * GiB)
    plan, argv = argv_of(a, entry, SlotKind.CHAT, host((24, 24), (24, 23), (24, 20)))
    assert flag(argv, "--tp-size") == "2" and a.environment(plan)["CUDA_VISIBLE_DEVICES"] == "0,1"
    static = 30 * GiB + QWEN3_KV_PER_TOKEN * 8192
    expected = math.ceil(static / 2 / (23 * GiB - CUDA_CONTEXT) * 1000) / 1000  # of the less free of the two
    assert float(flag(argv, "--mem-fraction-static")) == expected and 0.6 < expected < 0.9
    assert plan.compute == 2 * (CUDA_CONTEXT + RUNTIME_PER_GPU)


def test_tensor_parallel_sizes_divide_the_attention_heads(tmp_path: Path) -> None:
    # Eight GPUs, none of which can hold it, but tp 8 would not divide 20 heads: 4 is the most.
    entry = model(tmp_path, {**QWEN3_8B, "num_attention_heads": 20}, 200 * GiB)
    plan, argv = argv_of(adapter(tmp_path), entry, SlotKind.CHAT, host(*[(24, 24)] * 8))
    assert flag(argv, "--tp-size") == "4" and float(flag(argv, "--mem-fraction-static")) == 0.9  # at the cap


def test_the_fraction_stays_between_the_floor_and_the_cap(tmp_path: Path) -> None:
    small = model(tmp_path, {**QWEN3_8B, "num_hidden_layers": 2}, GiB, name="small")
    plan, argv = argv_of(adapter(tmp_path, context_length=1024), small, SlotKind.CHAT, host((80, 80)))
    assert flag(argv, "--mem-fraction-static") == "0.100"
    # The room the floor gives beyond the plan stays unused: the KV pool holds the planned context.
    assert flag(argv, "--max-total-tokens") == "1024" and plan.kv_cache == 2 * 2 * 8 * 128 * 2 * 1024
    large = model(tmp_path, QWEN3_8B, 70 * GiB, name="large")
    _, argv = argv_of(adapter(tmp_path, mem_fraction_cap=0.8), large, SlotKind.CHAT, host((80, 80)))
    assert flag(argv, "--mem-fraction-static") == "0.800" and flag(argv, "--tp-size") == "1"


def test_environment_names_the_gpus_as_nvml_does_and_lets_a_parked_engine_be_probed(tmp_path: Path) -> None:
    a = adapter(tmp_path)
    plan = a.plan(model(tmp_path, QWEN3_8B, 16 * GiB), SlotKind.CHAT, host((80, 80), (80, 80)), 0)
    env = a.environment(plan)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION"] == "0" and env["HF_HUB_OFFLINE"] == "1"


def test_a_plan_without_sglangs_placement_cannot_be_started(tmp_path: Path) -> None:
    # Another engine's plan, or one recorded before the placement was kept in the plan: guessing its GPUs and
    # fraction could take memory the budget gave to others.
    entry = model(tmp_path, QWEN3_8B, GiB)
    with pytest.raises(RuntimeError, match="no GPUs or memory fraction for SGLang"):
        adapter(tmp_path).command(PYTHON, entry, SlotKind.CHAT, 1, MemoryPlan(GiB, GiB, 0, 4096))


def test_a_plan_read_back_from_an_engine_record_starts_the_engine_as_planned(tmp_path: Path) -> None:
    entry = model(tmp_path, QWEN3_8B, 30 * GiB)
    planner = adapter(tmp_path, context_length=8192)
    plan = planner.plan(entry, SlotKind.CHAT, host((24, 24), (24, 23)), 0)
    # As an engine record keeps it (manager/engine_starts.py) and a restarted manager reads it (adoption.py),
    # into an adapter that planned nothing.
    recorded = MemoryPlan(**json.loads(json.dumps(dataclasses.asdict(plan))))
    restarted = adapter(tmp_path, context_length=8192)
    argv = restarted.command(PYTHON, entry, SlotKind.CHAT, 1, recorded)
    assert argv == planner.command(PYTHON, entry, SlotKind.CHAT, 1, plan) and flag(argv, "--tp-size") == "2"
    assert restarted.environment(recorded)["CUDA_VISIBLE_DEVICES"] == "0,1" and recorded == plan


def test_plans_alike_but_for_their_gpus_each_start_on_their_own(tmp_path: Path) -> None:
    a = adapter(tmp_path)
    entry = model(tmp_path, QWEN3_8B, 16 * GiB)
    on_0 = a.plan(entry, SlotKind.CHAT, host((80, 80), (80, 70)), 0)
    on_1 = a.plan(entry, SlotKind.CHAT, host((80, 70), (80, 80)), 0)  # the same sizes, the other GPU the freest
    assert a.environment(on_0)["CUDA_VISIBLE_DEVICES"] == "0" and a.environment(on_1)["CUDA_VISIBLE_DEVICES"] == "1"
    assert (on_0.gpus, on_1.gpus) == ((0,), (1,))


def test_only_the_gpus_the_managers_cuda_visible_devices_lists_are_used(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    a = adapter(tmp_path, context_length=8192)
    entry = model(tmp_path, QWEN3_8B, 30 * GiB)  # needs two of these GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    plan, argv = argv_of(a, entry, SlotKind.CHAT, host((24, 24), (24, 23), (24, 20)))
    assert plan.gpus == (2,) and flag(argv, "--tp-size") == "1" and a.environment(plan)["CUDA_VISIBLE_DEVICES"] == "2"
    assert flag(argv, "--mem-fraction-static") == "0.900"  # at the cap: the one GPU it may use is short
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    assert a.plan(entry, SlotKind.CHAT, host((24, 24), (24, 23), (24, 20)), 0).gpus == (1, 2)


@pytest.mark.parametrize(("visible", "match"), [
    ("GPU-5b1c3a9e-0000-0000-0000-000000000000", "names them otherwise \\(UUIDs or MIG instances\\)"),
    ("7", "shows SGLang none of this host's NVIDIA GPUs"),
])
def test_a_cuda_visible_devices_that_cannot_be_placed_on_refuses_the_plan_saying_how_to_fix_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, visible: str, match: str) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(PlanRefused, match=match):
        adapter(tmp_path).plan(model(tmp_path, QWEN3_8B, GiB), SlotKind.CHAT, host((80, 80)), 0)


@pytest.mark.parametrize(("hardware", "match"), [
    (None, "not been probed"),
    (HardwareSnapshot(os="linux", arch="x86_64", cpu_model="cpu", cpu_cores=2, cpu_threads=2, ram_total=GiB,
                      ram_available=GiB), "needs an NVIDIA GPU"),
    (host((80, 80), os="windows"), "runs on Linux"),
])
def test_hosts_sglang_cannot_run_on_are_refused_with_the_reason(tmp_path: Path, hardware: HardwareSnapshot | None,
                                                                 match: str) -> None:
    entry = model(tmp_path, QWEN3_8B, GiB)
    with pytest.raises(EngineMissing, match=match):
        adapter(tmp_path).plan(entry, SlotKind.CHAT, hardware, 0)


def test_install_refuses_a_driver_too_old_for_cuda_13_before_downloading(tmp_path: Path) -> None:
    with pytest.raises(EngineMissing, match="580 or newer; this host has 550"):
        adapter(tmp_path).install(host((80, 80), driver="550.54.15"), lambda pct, line: None)
    assert not (tmp_path / "engines" / "sglang").exists()


def test_model_directories_without_what_the_plan_needs_say_so(tmp_path: Path) -> None:
    entry = model(tmp_path, {"model_type": "qwen3"}, GiB)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        adapter(tmp_path).plan(entry, SlotKind.CHAT, host((80, 80)), 0)
    (Path(entry.dir) / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        adapter(tmp_path).plan(entry, SlotKind.CHAT, host((80, 80)), 0)


def test_the_index_decides_which_safetensors_are_weights(tmp_path: Path) -> None:
    entry = model(tmp_path, QWEN3_8B, 2 * GiB)
    directory = Path(entry.dir)
    with (directory / "consolidated.safetensors").open("wb") as f:
        f.truncate(2 * GiB)  # another copy of the same weights, as some repos ship
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    assert adapter(tmp_path).plan(entry, SlotKind.CHAT, host((80, 80)), 0).weights == 2 * GiB


def test_the_python_comes_from_settings_or_our_environment(tmp_path: Path) -> None:
    assert adapter(tmp_path).find_binary() is None  # nothing installed yet
    assert adapter(tmp_path, python=sys.executable).find_binary() == Path(sys.executable)
    with pytest.raises(EngineMissing, match="sglang.python points to"):
        adapter(tmp_path, python=str(tmp_path / "nope")).find_binary()
    assert adapter(tmp_path).pip.venv.requirements == ("sglang==0.5.23",)
    assert adapter(tmp_path, requirements=["sglang==0.5.19"]).pip.venv.requirements == ("sglang==0.5.19",)


def test_the_registry_serves_safetensors_on_an_nvidia_host_with_sglang(tmp_path: Path) -> None:
    registry = EngineRegistry(Settings(sglang=SglangSettings(parallel=24)), Paths(tmp_path))
    entry = model(tmp_path, QWEN3_8B, GiB)
    assert registry.choose(entry, SlotKind.CHAT, host((80, 80))).engine == "sglang"
    assert registry.parallel("sglang") == 24 and registry.get("sglang").parks  # type: ignore[attr-defined]


@pytest.mark.parametrize(("toml", "match"), [
    ("[sglang]\nparallel = 0", "sglang.parallel must be 1-1024"),
    ("[sglang]\ncontext_length = 100", "sglang.context_length must be >= 256"),
    ("[sglang]\nmem_fraction_cap = 0.99", "sglang.mem_fraction_cap must be in 0.1-0.95"),
    ("[sglang]\nmem_fraction_cap = nan", "sglang.mem_fraction_cap must be in 0.1-0.95"),
    ('[sglang]\nrequirements = [" "]', "sglang.requirements"),
    ('[sglang]\nextra_args = ["--port=9000"]', "--port is set by LMForge"),
    ('[sglang]\nextra_args = ["--tp-size", "2"]', "--tp-size is set by LMForge"),
    ("[sglang]\nparalel = 4", 'unknown key "sglang.paralel" \\(did you mean "sglang.parallel"\\?\\)'),
])
def test_bad_sglang_settings_name_the_key(toml: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        decode_settings(toml).validate()


def test_sglang_settings_read_from_toml() -> None:
    settings = decode_settings('[sglang]\nparallel = 32\nmem_fraction_cap = 0.85\n'
                               'extra_args = ["--log-level", "warning"]')
    settings.validate()
    assert (settings.sglang.parallel, settings.sglang.mem_fraction_cap) == (32, 0.85)
    assert settings.sglang.extra_args == ["--log-level", "warning"] and settings.sglang.context_length == 32768
