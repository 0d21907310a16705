"""Anthropic Messages requests translated to the internal model, and the 400s that name a bad field."""

from __future__ import annotations

import json

import pytest

from gateway.api.anthropic.codec import check_request, to_chat
from gateway.dataplane.model import engine_body
from gateway.errors import ApiError

PNG = "iVBORw0KGgo="


def chat(**body):  # type: ignore[no-untyped-def]
    body = {"model": "m", "max_tokens": 8, **body}
    check_request(body, "max_tokens")
    return engine_body(to_chat(body, "canonical"))


def test_system_blocks_text_and_sampling_fields_map_to_the_engine_body() -> None:
    out = chat(system=[{"type": "text", "text": "be"}, {"type": "text", "text": "brief"}],
               messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
               temperature=0.5, top_p=0.9, top_k=20, stop_sequences=["END"], metadata={"user_id": "u"})
    assert out["model"] == "canonical"
    assert out["messages"] == [{"role": "system", "content": "be\nbrief"}, {"role": "user", "content": "a\nb"}]
    assert (out["max_tokens"], out["temperature"], out["top_p"], out["top_k"]) == (8, 0.5, 0.9, 20)
    assert out["stop"] == ["END"] and out["verbose"] is True  # verbose: the engine names the stop string hit
    assert out["chat_template_kwargs"] == {"enable_thinking": False} and "metadata" not in out


def test_tool_use_becomes_tool_calls_and_tool_result_a_tool_message_right_after() -> None:
    out = chat(messages=[
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                          {"type": "text", "text": "Looking."},
                                          {"type": "tool_use", "id": "t1", "name": "now", "input": {"tz": "UTC"}}]},
        {"role": "user", "content": [{"type": "text", "text": "thanks"},
                                     {"type": "tool_result", "tool_use_id": "t1", "content": "noon"},
                                     {"type": "tool_result", "tool_use_id": "t2", "is_error": True,
                                      "content": [{"type": "text", "text": "boom"}]}]},
    ], tools=[{"name": "now", "description": "time", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "now", "disable_parallel_tool_use": True})
    assistant, first, second, user = out["messages"][1:]
    assert assistant["content"] == "Looking." and assistant["reasoning_content"] == "hmm"
    call = assistant["tool_calls"][0]
    assert call["id"] == "t1" and call["function"]["name"] == "now" and json.loads(call["function"]["arguments"]) == {
        "tz": "UTC"}
    assert first == {"role": "tool", "content": "noon", "tool_call_id": "t1"}
    assert second == {"role": "tool", "content": "Error: boom", "tool_call_id": "t2"}
    assert user == {"role": "user", "content": "thanks"}
    assert out["tools"] == [{"type": "function", "function": {"name": "now", "description": "time",
                                                              "parameters": {"type": "object"}}}]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "now"}}
    assert out["parallel_tool_calls"] is False


@pytest.mark.parametrize("choice, expected", [("auto", "auto"), ("any", "required"), ("none", "none")])
def test_tool_choice_types_map_to_openais(choice: str, expected: str) -> None:
    assert chat(messages=[{"role": "user", "content": "x"}], tool_choice={"type": choice})["tool_choice"] == expected


def test_images_become_image_url_parts_also_from_a_tool_result() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}}
    out = chat(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "shot"}, image]},
        {"type": "text", "text": "see"}]}])
    tool, user = out["messages"]
    assert tool["content"] == "shot"
    assert user["content"] == [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
                               {"type": "text", "text": "see"}]


def test_thinking_and_structured_output() -> None:
    schema = {"type": "object"}
    out = chat(messages=[{"role": "user", "content": "x"}], thinking={"type": "enabled", "budget_tokens": 1024},
               max_tokens=2048,
               output_config={"format": {"type": "json_schema", "schema": schema}})
    assert out["chat_template_kwargs"] == {"enable_thinking": True}
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": None}, "max_tokens"),
    ({"messages": "x"}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 1.5}, "temperature"),
    ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]},
     "messages[0].content[0].source.type"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages[0].content[0].tool_use_id"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": []}]}]},
     "messages[0].content[0].input"),
    ({"messages": [{"role": "user", "content": "x"}], "system": 5}, "system"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "always"}}, "thinking.type"),
])
def test_a_bad_field_is_a_400_naming_it(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as err:
        chat(**body)
    assert err.value.status == 400 and err.value.param == param


def test_server_tools_are_left_out_and_custom_tools_kept() -> None:
    out = chat(messages=[{"role": "user", "content": "x"}],
               tools=[{"type": "bash_20250124", "name": "bash"}, {"name": "now", "input_schema": {"type": "object"}}])
    assert [t["function"]["name"] for t in out["tools"]] == ["now"]


def test_keep_alive_reaches_the_internal_request() -> None:
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}], "keep_alive": 0}
    check_request(body, "max_tokens")
    assert to_chat(body, "canonical").keep_alive == 0
