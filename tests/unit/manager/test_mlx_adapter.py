"""The MLX adapter's memory plan and command line, from a model directory on disk, and its [mlx] settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from manager.config import ConfigError, MlxSettings, Paths, Settings, load_settings
from manager.engines import mlx_launch
from manager.engines.base import EngineMissing
from manager.engines.mlx import LINUX_REQUIREMENTS, MACOS_REQUIREMENTS, RUNTIME, MlxAdapter
from manager.engines.venv import MARKER
from manager.protocol import HardwareSnapshot, ModelEntry, SlotKind

MiB, GiB = 1024**2, 1024**3
# A small Qwen-like config: 4 layers, 8 query heads and 2 KV heads of 64 dimensions, bfloat16, 32768 trained.
CONFIG = {"model_type": "qwen2", "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4,
          "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 32768,
          "torch_dtype": "bfloat16"}
KV_PER_TOKEN = 2 * 4 * 2 * 64 * 2  # keys and values x layers x KV heads x head dim x bytes


def host(os_name: str = "linux") -> HardwareSnapshot:
    return HardwareSnapshot(os=os_name, arch="x86_64", cpu_model="cpu", cpu_cores=2, cpu_threads=2,
                            ram_total=16 * GiB, ram_available=8 * GiB)


def model(directory: Path, config: dict | None = CONFIG, shards: tuple[int, ...] = (3000, 5000),
          **fields: object) -> ModelEntry:
    """A pulled MLX model's directory: its config, shards of the sizes given, and a stray consolidated copy."""
    directory.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    for i, size in enumerate(shards, 1):
        (directory / f"model-{i:05d}-of-{len(shards):05d}.safetensors").write_bytes(b"\0" * size)
    (directory / "consolidated.safetensors").write_bytes(b"\0" * 100_000)  # mlx_lm never loads it
    fields.setdefault("size_bytes", sum(shards))
    return ModelEntry(name="tiny:mlx", path=str(directory), dir=str(directory), format="mlx",
                      **fields)  # type: ignore[arg-type]


def adapter(tmp_path: Path, **mlx: object) -> MlxAdapter:
    return MlxAdapter(Settings(mlx=MlxSettings(**mlx)), Paths(tmp_path / "home"))  # type: ignore[arg-type]


def flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, argv
    return argv[argv.index(name) + 1]


# --- plan ---


def test_weights_are_the_shards_mlx_loads_and_kv_follows_the_config(tmp_path: Path) -> None:
    entry = model(tmp_path / "m")
    plan = adapter(tmp_path, ctx_size=4096, cache_mb=0, parallel=1).plan(entry, SlotKind.CHAT, host(), 0)
    assert plan.weights == 8000  # the two model-*.safetensors shards, not consolidated.safetensors
    assert plan.kv_cache == KV_PER_TOKEN * 4096 and plan.ctx_size == 4096 and plan.ctx_max == 32768
    assert plan.gpu_layers == 0 and plan.compute >= RUNTIME
    assert plan.growth == plan.kv_cache, "the KV cache fills only as requests come"


def test_every_request_the_server_batches_has_a_kv_cache_of_its_own_in_the_plan(tmp_path: Path) -> None:
    # mlx_lm.server decodes `parallel` requests at once, each with a whole context's cache: the plan counts them
    # all, in the plan's total and in what grows after ready.
    entry = model(tmp_path / "m")
    one = adapter(tmp_path, ctx_size=4096, cache_mb=0, parallel=1).plan(entry, SlotKind.CHAT, host(), 0)
    three = adapter(tmp_path, ctx_size=4096, cache_mb=0, parallel=3).plan(entry, SlotKind.CHAT, host(), 0)
    assert three.kv_cache == 3 * one.kv_cache == 3 * KV_PER_TOKEN * 4096
    assert three.total - one.total == 2 * KV_PER_TOKEN * 4096 and three.growth == three.kv_cache
    assert three.ctx_size == one.ctx_size == 4096  # each request's context, not shared among them


def test_mla_models_keep_one_latent_per_layer(tmp_path: Path) -> None:
    # DeepSeek V3's shape: mlx_lm caches the compressed latent and the rope key, one per layer, not per head.
    config = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "num_attention_heads": 128,
              "num_key_value_heads": 128, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "hidden_size": 7168,
              "max_position_embeddings": 163840, "torch_dtype": "bfloat16"}
    plan = adapter(tmp_path, ctx_size=4096, parallel=1).plan(model(tmp_path / "m", config=config), SlotKind.CHAT,
                                                             host(), 0)
    assert plan.kv_cache == 61 * (512 + 64) * 2 * 4096


def test_the_prompt_cache_is_planned_and_grows_after_ready(tmp_path: Path) -> None:
    entry = model(tmp_path / "m")
    without = adapter(tmp_path, cache_mb=0).plan(entry, SlotKind.CHAT, host(), 0)
    with_cache = adapter(tmp_path, cache_mb=64).plan(entry, SlotKind.CHAT, host(), 0)
    assert with_cache.total - without.total == 64 * MiB and with_cache.growth - without.growth == 64 * MiB


def test_context_is_capped_by_the_trained_one_and_grows_for_an_ask(tmp_path: Path) -> None:
    entry = model(tmp_path / "m", config={**CONFIG, "max_position_embeddings": 2048})
    assert adapter(tmp_path, ctx_size=8192).plan(entry, SlotKind.CHAT, host(), 0).ctx_size == 2048
    roomy = model(tmp_path / "roomy")
    assert adapter(tmp_path, ctx_size=4096).plan(roomy, SlotKind.CHAT, host(), 0, num_ctx=16384).ctx_size == 16384


def test_a_vision_models_text_config_is_the_one_read(tmp_path: Path) -> None:
    nested = {"model_type": "gemma3", "vision_config": {"hidden_size": 1152}, "text_config": CONFIG}
    plan = adapter(tmp_path, ctx_size=1024, parallel=1).plan(model(tmp_path / "m", config=nested), SlotKind.CHAT,
                                                             host(), 0)
    assert plan.kv_cache == KV_PER_TOKEN * 1024 and plan.ctx_max == 32768


def test_a_model_without_a_config_plans_its_size_and_no_cache(tmp_path: Path) -> None:
    entry = model(tmp_path / "m", config=None, shards=(), context_length=1024, size_bytes=777)
    plan = adapter(tmp_path, ctx_size=4096).plan(entry, SlotKind.CHAT, host(), 0)
    assert (plan.weights, plan.kv_cache, plan.ctx_size) == (777, 0, 1024)  # the index's figures stand in


# --- command ---


def test_the_command_runs_the_launcher_on_the_models_directory_on_loopback(tmp_path: Path) -> None:
    entry = model(tmp_path / "m")
    mlx = adapter(tmp_path, parallel=3, cache_mb=16)
    plan = mlx.plan(entry, SlotKind.CHAT, host(), 0)
    argv = mlx.command(Path("/venv/bin/python"), entry, SlotKind.CHAT, 5123, plan, threads=2)
    assert argv[:2] == ["/venv/bin/python", mlx_launch.__file__]
    assert flag(argv, "--model") == str(tmp_path / "m") and flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--port") == "5123"
    assert flag(argv, "--allowed-origins") == "http://127.0.0.1:5123", "no other page may read its answers"
    assert flag(argv, "--max-tokens") == str(plan.ctx_size)
    assert flag(argv, "--decode-concurrency") == flag(argv, "--prompt-concurrency") == "3"
    assert flag(argv, "--prompt-cache-bytes") == str(16 * MiB)
    assert not any("thread" in arg for arg in argv), "MLX has no thread setting"


def test_catalog_defaults_become_the_servers_and_extra_args_come_last(tmp_path: Path) -> None:
    entry = model(tmp_path / "m", options={"temperature": 0.6, "top_k": 20.0, "min_p": 0, "repeat_penalty": 1.1,
                                           "think": True})
    mlx = adapter(tmp_path, extra_args=["--log-level", "DEBUG"])
    argv = mlx.command(Path("/py"), entry, SlotKind.CHAT, 5000, mlx.plan(entry, SlotKind.CHAT, host(), 0))
    assert (flag(argv, "--temp"), flag(argv, "--top-k"), flag(argv, "--min-p")) == ("0.6", "20", "0")
    assert "--repeat-penalty" not in argv and "True" not in argv  # options mlx_lm.server cannot take are left out
    assert argv[-2:] == ["--log-level", "DEBUG"]


def test_the_launcher_marks_the_load_stage_the_adapter_watches_for(tmp_path: Path) -> None:
    assert adapter(tmp_path).load_markers == ((mlx_launch.LOADING, "loading_weights"),)


# --- install ---


def test_requirements_follow_the_platform_unless_set(tmp_path: Path) -> None:
    expected = MACOS_REQUIREMENTS if sys.platform == "darwin" else LINUX_REQUIREMENTS
    assert adapter(tmp_path).pip.requirements == expected
    assert "mlx[cpu]" in LINUX_REQUIREMENTS and "mlx[cpu]" not in MACOS_REQUIREMENTS
    assert adapter(tmp_path, requirements=["mlx-lm==0.32.2"]).pip.requirements == ("mlx-lm==0.32.2",)


def test_the_venv_is_found_only_with_a_marker_for_the_same_requirements(tmp_path: Path) -> None:
    mlx = adapter(tmp_path)
    assert mlx.find_binary() is None
    venv = mlx.pip.venv
    venv.python.parent.mkdir(parents=True)
    venv.python.write_text("")
    (venv.root / MARKER).write_text(json.dumps({"requirements": list(mlx.pip.requirements), "versions": {}}))
    assert mlx.find_binary() == venv.python
    assert adapter(tmp_path, requirements=["mlx-lm"]).find_binary() is None, "other requirements: install again"


def test_a_python_set_by_path_is_used_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("")
    assert adapter(tmp_path, python=str(python)).find_binary() == python
    with pytest.raises(EngineMissing, match="LMFORGE_MLX_PYTHON / mlx.python points to .*nowhere"):
        adapter(tmp_path, python=str(tmp_path / "nowhere")).find_binary()


def test_windows_is_refused_before_pip(tmp_path: Path) -> None:
    with pytest.raises(EngineMissing, match="MLX does not run on Windows"):
        adapter(tmp_path).install(host("windows"), lambda pct, line: None)
    assert not (tmp_path / "home" / "engines" / "mlx").exists()


# --- settings ---


@pytest.mark.parametrize(("text", "message"), [
    ("[mlx]\nparallel = 0", "mlx.parallel must be 1-64"), ("[mlx]\nctx_size = 10", "mlx.ctx_size must be >= 256"),
    ("[mlx]\ncache_mb = -1", "mlx.cache_mb must be >= 0"),
    ('[mlx]\nrequirements = [" "]', "mlx.requirements: each must be a pip requirement"),
    ("[mlx]\nparalel = 2", 'unknown key "mlx.paralel" \\(did you mean "mlx.parallel"\\?\\)'),
])
def test_bad_mlx_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path)


def test_the_environment_names_the_mlx_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.toml").write_text('[mlx]\npython = "/from/file"\nparallel = 2\n')
    monkeypatch.setenv("LMFORGE_MLX_PYTHON", "/from/env/python")
    settings, _ = load_settings(tmp_path)
    assert (settings.mlx.python, settings.mlx.parallel) == ("/from/env/python", 2)
