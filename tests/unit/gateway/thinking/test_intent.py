"""One thinking contract read the same way from every dialect's fields, with one precedence."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import ApiError
from gateway.thinking.intent import Intent, plan, read_intent, without_own
from manager.config import Settings
from manager.protocol import ModelEntry

THINKER = ModelEntry(name="q", path="/m.gguf", format="gguf", size_bytes=1, thinking=True)
SETTINGS = Settings(thinking_budget_low=10, thinking_budget_medium=20, thinking_budget_high=30,
                    thinking_answer_tokens=99)


@pytest.mark.parametrize(("body", "on", "budget"), [
    ({}, None, None),
    ({"think": True}, True, 20),
    ({"think": "high"}, True, 30),
    ({"think": False, "thinking_budget": 5}, False, None),
    ({"thinking_budget": 5}, True, 5),  # a budget alone asks for thinking
    ({"thinking": {"type": "enabled", "budget_tokens": 7}}, True, 7),
    ({"thinking": {"type": "adaptive"}}, True, 20),
    ({"chat_template_kwargs": {"enable_thinking": True}}, True, 20),
    ({"think": False, "chat_template_kwargs": {"enable_thinking": True}}, False, None),  # think wins
    ({"thinking": {"type": "disabled"}, "chat_template_kwargs": {"enable_thinking": True}}, False, None),
    ({"think": "low", "thinking_budget": 3}, True, 3),  # thinking_budget beats the level
    ({"thinking_budget": 5, "extra_body": {"thinking_budget": 6}}, True, 6),  # extra_body wins
])
def test_precedence(body: dict[str, Any], on: bool | None, budget: int | None) -> None:
    intent = read_intent(body)
    assert intent.on is on
    made = plan(intent, THINKER, SETTINGS)
    assert (made.budget if made else None) == budget


def test_a_model_that_cannot_think_is_served_in_one_call() -> None:
    plain = ModelEntry(name="p", path="/m.gguf", format="gguf", size_bytes=1)
    assert plan(read_intent({"think": True}), plain, SETTINGS) is None


def test_the_plan_carries_the_answer_budget_and_whether_reasoning_streams() -> None:
    made = plan(read_intent({"think": True, "stream_reasoning_deltas": False}), THINKER, SETTINGS)
    assert made is not None and (made.answer_tokens, made.stream_deltas) == (99, False)


@pytest.mark.parametrize(("body", "param"), [
    ({"think": "max"}, "think"), ({"think": 1}, "think"),
    ({"thinking_budget": 0}, "thinking_budget"), ({"thinking_budget": True}, "thinking_budget"),
    ({"thinking_budget": 2.5}, "thinking_budget"),
    ({"thinking": {"type": "on"}}, "thinking.type"), ({"thinking": "yes"}, "thinking.type"),
    ({"thinking": {"type": "enabled", "budget_tokens": -1}}, "thinking.budget_tokens"),
    ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "chat_template_kwargs.enable_thinking"),
    ({"stream_reasoning_deltas": "no"}, "stream_reasoning_deltas"),
    ({"extra_body": []}, "extra_body"),
])
def test_bad_fields_are_a_400_naming_them(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        read_intent(body)
    assert caught.value.status == 400 and caught.value.param == param


def test_the_engine_gets_the_switch_and_none_of_lmforges_fields() -> None:
    body = {"model": "q", "think": False, "thinking_budget": 3, "stream_reasoning_deltas": True,
            "chat_template_kwargs": {"x": 1}, "extra_body": {"top_k": 5, "thinking_budget": 4}}
    assert without_own(body, read_intent(body)) == {
        "model": "q", "top_k": 5, "chat_template_kwargs": {"x": 1, "enable_thinking": False}}
    assert without_own({"model": "q"}, Intent()) == {"model": "q"}
