"""MlxAdapter: how mlx_lm.server (MLX; on Linux mlx[cpu], on the CPU) is installed, started, probed and budgeted.

The server runs under LMForge's launcher (mlx_launch.py), in a virtual environment of its own (venv.py): one
model per process, serving only once that model is loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from manager.config import Paths, Settings
from manager.context import start_ctx
from manager.engines import mlx_launch
from manager.engines.base import MemoryPlan, Progress
from manager.engines.hf_config import kv_bytes_per_token, model_dir, positive_int, read_config, text_config
from manager.engines.venv import PipEngine
from manager.protocol import HardwareSnapshot, ModelEntry, SlotKind
from prober.engine_choice import MLX, SERVES

MiB = 1024**2
LAUNCHER = Path(mlx_launch.__file__)
# What pip installs: mlx[cpu] is MLX's CPU backend, the one Linux has; macOS wheels bring Metal. mlx-lm is held to
# the minor release the launcher was checked against (it reaches into mlx_lm.server: see mlx_launch.py).
MLX_LM = "mlx-lm>=0.32.2,<0.33"
LINUX_REQUIREMENTS = ("mlx[cpu]", MLX_LM)
MACOS_REQUIREMENTS = (MLX_LM,)
# What the Python process holds before any model: the interpreter, mlx, mlx_lm and the tokenizer libraries
# (85 MiB measured on Linux with the tiny test model; a real tokenizer adds tens of MiB).
RUNTIME = 192 * MiB
# mlx_lm.server runs a prompt through the model this many tokens at a time (its --prefill-step-size default).
PREFILL_STEP = 2048
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Catalog defaults (ModelEntry.options) become the server's own defaults, for requests that do not set them.
SAMPLING_FLAGS = {"temperature": "--temp", "top_p": "--top-p", "top_k": "--top-k", "min_p": "--min-p"}


def weight_files(directory: Path) -> list[Path]:
    """The files mlx_lm loads: model*.safetensors only (a repo's consolidated.safetensors is another copy)."""
    return sorted(directory.glob("model*.safetensors"))


def dtype_bytes(config: dict[str, Any]) -> int:
    """Bytes per value of the model's activation type, which its KV cache takes; 2 unless config.json says more."""
    return DTYPE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or "float16"), 2)


def read_text_config(directory: Path) -> dict[str, Any]:
    """config.json's text model part; {} when there is none to read: the plan then counts the weights alone."""
    try:
        return text_config(read_config(directory))
    except ValueError:
        return {}


def activation_bytes(config: dict[str, Any]) -> int:
    """One prefill step's widest activations, in float32: an upper bound on the graph's working memory."""
    return PREFILL_STEP * (positive_int(config, "hidden_size") + positive_int(config, "intermediate_size")) * 4


class MlxAdapter:
    """mlx_lm.server, one process per chat model."""

    name = MLX
    formats, kinds = SERVES[MLX]
    # Its /v1/models scans the Hugging Face cache and fails without one; /health answers 200 once the launcher
    # has loaded the model and bound the port.
    health_path = "/health"
    # mlx_lm logs nothing while it loads; the launcher marks the start. Loading is one step (weights read and
    # evaluated): no context to build, no warm-up run.
    load_markers = ((mlx_launch.LOADING, "loading_weights"),)
    # mlx_lm parses <think> itself for tokenizers that have the tokens, into the delta's `reasoning` field.
    reasoning = "field"
    parks = False

    def __init__(self, settings: Settings, paths: Paths) -> None:
        self.settings = settings.mlx
        self.paths = paths
        self.pip = PipEngine(paths, self.name, python=self.settings.python, requirements=self.settings.requirements,
                             defaults=MACOS_REQUIREMENTS if sys.platform == "darwin" else LINUX_REQUIREMENTS,
                             python_setting="LMFORGE_MLX_PYTHON / mlx.python")

    @property
    def parallel(self) -> int:
        """Requests one server decodes at once in a batch (--decode-concurrency): the leases its slot grants."""
        return self.settings.parallel


    def find_binary(self) -> Path | None:
        return self.pip.find_binary()

    def install(self, hardware: HardwareSnapshot, report: Progress) -> Path:
        windows = "MLX does not run on Windows: use a GGUF build of the model (llama.cpp)"
        return self.pip.install(windows if hardware.os == "windows" else None, report)

    def environment(self, plan: MemoryPlan) -> dict[str, str]:
        # The model is on disk: the engine never fetches anything from the Hugging Face Hub.
        return {"HF_HUB_OFFLINE": "1"}

    def workaround(self, returncode: int, tail: str, applied: tuple[str, ...]) -> str | None:
        return None

    def plan(
        self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None, vram_budget: int,
        num_ctx: int = 0,
    ) -> MemoryPlan:
        """Weights as they are on disk (mlx_lm reads them whole), keys and values for the context, the runtime.

        mlx_lm.server has no context limit of its own: the plan's context is what memory is reserved for, per
        request, and the longest reply a request gets when it sets no max_tokens. The KV cache and the prompt cache
        fill only as requests come, so both are growth after ready."""
        directory = model_dir(entry)
        config = read_text_config(directory)
        weights = sum(f.stat().st_size for f in weight_files(directory)) or entry.size_bytes
        trained = positive_int(config, "max_position_embeddings") or entry.context_length
        ctx = start_ctx(self.settings.ctx_size, num_ctx, trained)
        # mlx_lm.server decodes up to `parallel` requests in one batch (--decode-concurrency), each with a KV cache
        # of its own: the plan counts `parallel` whole contexts. Bounding --max-tokens instead could not hold the
        # total: a request's own max_tokens overrides it, and the server bounds no prompt.
        kv = kv_bytes_per_token(config, dtype_bytes(config)) * ctx * self.parallel
        cache = self.settings.cache_mb * MiB
        return MemoryPlan(weights=weights, kv_cache=kv, compute=RUNTIME + activation_bytes(config) + cache,
                          ctx_size=ctx, ctx_max=trained, growth=kv + cache)

    def command(
        self, binary: Path, entry: ModelEntry, kind: SlotKind, port: int, plan: MemoryPlan,
        *, threads: int = 0, workarounds: tuple[str, ...] = (),
    ) -> list[str]:
        """The argv. `threads` is not passed on: MLX's CPU backend has no thread setting."""
        parallel = str(self.parallel)
        argv = [
            str(binary), str(LAUNCHER),
            "--model", str(model_dir(entry)),
            "--host", "127.0.0.1",
            "--port", str(port),
            # Its default is "*": any web page could read its answers. Same-origin needs no CORS.
            "--allowed-origins", f"http://127.0.0.1:{port}",
            "--max-tokens", str(plan.ctx_size),  # its default is 512, whatever the context
            "--decode-concurrency", parallel, "--prompt-concurrency", parallel,
            "--prompt-cache-bytes", str(self.settings.cache_mb * MiB),  # its default has no byte limit
        ]
        for key, value in sorted(entry.options.items()):
            flag = SAMPLING_FLAGS.get(key)
            if flag is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                argv += [flag, str(int(value) if flag == "--top-k" else value)]
        return argv + list(self.settings.extra_args)
