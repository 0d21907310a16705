"""The official openai, ollama and anthropic clients reading a thinking budget's answer, status frames included.

A real llama-server serves the cycle model (" hello world" forever) with a
template that opens a thought in the prompt: each call's text is exact. The
budget (4 tokens) runs out, so every answer comes from the second call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import anthropic
import ollama
import openai
import pytest

from tests.support.instance import Instance, running_instance
from tests.support.tiny_models import THINK_TEMPLATE, variant

MODEL = "tiny:thinker"
ASK = [{"role": "user", "content": "hello"}]
THOUGHT = " hello world hello world"  # the 4-token budget
ANSWER = "hello world hello world hello world"  # thinking_answer_tokens = 6


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    thinker = variant(models_dir, "thinker.gguf", "--chat-template", THINK_TEMPLATE)
    config = "thinking_budget_medium = 4\nthinking_answer_tokens = 6\n"
    with running_instance(tmp_path_factory.mktemp("thinking-clients") / "home", llama_server, {MODEL: thinker},
                          config=config) as inst:
        yield inst


def test_openai_streams_reasoning_then_the_answer(inst: Instance) -> None:
    client = openai.OpenAI(base_url=inst.url + "/v1", api_key="lmforge", max_retries=0)
    stream = client.chat.completions.create(model=MODEL, messages=ASK, stream=True,  # type: ignore[arg-type]
                                            extra_body={"thinking_budget": 4})
    reasoning = answer = ""
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            answer += delta.content or ""
    assert (reasoning, answer) == (THOUGHT, ANSWER)


def test_openai_whole_answer_has_reasoning_content_and_usage(inst: Instance) -> None:
    client = openai.OpenAI(base_url=inst.url + "/v1", api_key="lmforge", max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=ASK,  # type: ignore[arg-type]
                                           extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    message = reply.choices[0].message
    assert ((message.model_extra or {})["reasoning_content"], message.content) == (THOUGHT, ANSWER)
    assert reply.usage is not None and reply.usage.completion_tokens == 10
    assert reply.usage.completion_tokens_details.reasoning_tokens == 4  # type: ignore[union-attr]


def test_ollama_think_fills_thinking(inst: Instance) -> None:
    client = ollama.Client(host=inst.url)
    parts = list(client.chat(model=MODEL, messages=ASK, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == THOUGHT
    assert "".join(p.message.content or "" for p in parts) == ANSWER
    assert parts[-1].done and parts[-1].eval_count == 10
    whole = client.chat(model=MODEL, messages=ASK, think=True)
    assert (whole.message.thinking, whole.message.content) == (THOUGHT, ANSWER)


def test_anthropic_thinking_blocks_stream_and_whole(inst: Instance) -> None:
    client = anthropic.Anthropic(base_url=inst.url, api_key="lmforge", max_retries=0)
    thinking: Any = {"type": "enabled", "budget_tokens": 4}
    with client.messages.stream(model=MODEL, max_tokens=10, messages=ASK, thinking=thinking) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert (final.content[0].thinking, final.content[1].text) == (THOUGHT, ANSWER)  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10
    whole = client.messages.create(model=MODEL, max_tokens=10, messages=ASK, thinking=thinking)
    assert [b.type for b in whole.content] == ["thinking", "text"]
