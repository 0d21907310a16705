"""The thinking workflow's plumbing once against a real llama-server, started with `--reasoning-format`.

The model is the cycle model (" hello world" forever) with a Qwen3-like
template that opens a thought in the prompt, so llama-server itself parses
what it writes into `reasoning_content`, and every count is exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.instance import Instance, llama_servers_of, running_instance
from tests.support.tiny_models import THINK_TEMPLATE, variant

ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    thinker = variant(models_dir, "thinker.gguf", "--chat-template", THINK_TEMPLATE)
    with running_instance(tmp_path_factory.mktemp("thinking-engine") / "home", llama_server,
                          {"tiny:thinker": thinker}, config="thinking_answer_tokens = 6\n") as inst:
        yield inst


def test_a_budget_that_runs_out_continues_from_the_prefill_on_llama_server(inst: Instance) -> None:
    code, data = inst.request("POST", "/v1/chat/completions", raw=json.dumps({
        "model": "tiny:thinker", "messages": ASK, "thinking_budget": 4, "stream": True,
        "stream_options": {"include_usage": True}}).encode())
    assert code == 200, data
    chunks = [json.loads(line[5:]) for line in str(data).splitlines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    answer = "".join(d.get("content") or "" for d in deltas)
    # Call 1: four tokens of thought, parsed by llama-server itself; call 2: the answer's six, after the prefill.
    assert reasoning == " hello world hello world"
    assert answer == "hello world hello world hello world"
    assert [c["lmforge"] for c in chunks if "lmforge" in c] == [
        {"status": "call2_prefill", "reasoning_len": len(reasoning), "remaining_tokens": 6}]
    (usage,) = [c["usage"] for c in chunks if c.get("usage")]
    assert (usage["completion_tokens"], usage["completion_tokens_details"]["reasoning_tokens"]) == (10, 4)
    (engine,) = llama_servers_of(inst.home)
    argv = engine.cmdline()
    assert argv[argv.index("--reasoning-format") + 1] == "deepseek"


def test_a_whole_ollama_answer_carries_the_thinking_from_llama_server(inst: Instance) -> None:
    code, reply = inst.post("/api/chat", {"model": "tiny:thinker", "messages": ASK, "think": True,
                                          "thinking_budget": 2, "stream": False})
    assert code == 200, reply
    assert reply["message"]["thinking"] == " hello world"  # type: ignore[index]
    assert reply["message"]["content"] == "hello world hello world hello world"  # type: ignore[index]
    assert (reply["done_reason"], reply["eval_count"]) == ("length", 8)  # type: ignore[index]
