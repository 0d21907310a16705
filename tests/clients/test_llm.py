"""Simon Willison's `llm` CLI with the llm-ollama plugin, run as a user runs it, against LMForge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients.served import CYCLE, EMBED, EMBED_DIMS, cycle_text


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llm")


@pytest.fixture(scope="module")
def run_llm(lmforge, user_dir: Path):  # type: ignore[no-untyped-def]
    """`llm ARGS...` with the plugin finding LMForge through OLLAMA_HOST and its files in a scratch dir."""
    env = {**lmforge.env, "OLLAMA_HOST": lmforge.url, "LLM_USER_PATH": str(user_dir),
           "LLM_LOAD_PLUGINS": "llm-ollama"}

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "llm", *args], env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


def test_models_are_discovered_with_their_capabilities(run_llm) -> None:  # type: ignore[no-untyped-def]
    # The plugin lists /api/tags and keeps the models whose /api/show capabilities say "completion".
    chat_models = run_llm("models", "list")
    assert f"ollama/{CYCLE}" in chat_models and f"ollama/{EMBED}" not in chat_models


def test_prompt_with_an_option_is_answered_and_logged(run_llm, user_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert run_llm("-m", f"ollama/{CYCLE}", "-o", "num_predict", "4", "hello") == cycle_text(4) + "\n"
    assert (user_dir / "logs.db").exists()  # llm wrote where it was told, not in ~/.config


def test_embed(run_llm) -> None:  # type: ignore[no-untyped-def]
    vector = json.loads(run_llm("embed", "-m", f"ollama/{EMBED}", "-c", "some text"))
    assert len(vector) == EMBED_DIMS and all(isinstance(x, float) for x in vector)
