"""/v1/responses: input items translated to the internal model, and events rendered as response.* events."""

from __future__ import annotations

import json

import pytest

from gateway.api.openai.response_output import ResponseShell, ResponseStream, whole_response
from gateway.api.openai.responses import to_chat
from gateway.dataplane.collect import Completion
from gateway.dataplane.model import Finish, ReasoningDelta, TextDelta, ToolCall, ToolCallDelta, Usage, engine_body
from gateway.errors import ApiError


def chat(**body):  # type: ignore[no-untyped-def]
    return engine_body(to_chat({"model": "m", **body}, "canonical"))


def test_items_become_messages_with_calls_merged_into_the_assistant_turn() -> None:
    out = chat(instructions="be brief", input=[
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                         {"type": "input_text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "now", "arguments": '{"tz":"UTC"}'},
        {"type": "function_call", "call_id": "c2", "name": "later", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "noon"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "soon"}]},
    ], tools=[{"type": "function", "name": "now", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "now"}, max_output_tokens=5, temperature=0.3,
        parallel_tool_calls=False)
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["system", "system", "user", "assistant", "tool", "tool"]
    assert out["messages"][0]["content"] == "be brief" and out["messages"][2]["content"] == "a\nb"
    assistant = out["messages"][3]
    assert assistant["content"] == "Looking." and [c["id"] for c in assistant["tool_calls"]] == ["c1", "c2"]
    assert out["messages"][4] == {"role": "tool", "content": "noon", "tool_call_id": "c1"}
    assert out["messages"][5]["content"] == "soon"
    assert out["tool_choice"] == {"type": "function", "function": {"name": "now"}}
    assert out["tools"][0]["function"]["name"] == "now" and out["parallel_tool_calls"] is False
    assert (out["max_tokens"], out["temperature"]) == (5, 0.3)


def test_a_leading_function_call_opens_its_own_assistant_turn_and_images_pass_as_parts() -> None:
    out = chat(input=[{"role": "user", "content": [{"type": "input_text", "text": "see"},
                                                   {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
                      {"type": "function_call", "call_id": "c1", "name": "now", "arguments": "{}"}])
    assert out["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    assert out["messages"][1]["role"] == "assistant" and out["messages"][1]["content"] is None


def test_text_format_becomes_response_format() -> None:
    schema = {"type": "object"}
    out = chat(input="x", text={"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}})
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "a", "schema": schema,
                                                                             "strict": True}}
    assert chat(input="x", text={"format": {"type": "json_object"}})["response_format"] == {"type": "json_object"}
    assert "response_format" not in chat(input="x", text={"format": {"type": "text"}})


@pytest.mark.parametrize("body, param", [
    ({"input": 5}, "input"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"type": "function_call", "name": "n"}]}, "input[0].call_id"),
    ({"input": "x", "tool_choice": {"type": "mcp"}}, "tool_choice"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": "x", "instructions": ["x"]}, "instructions"),
    ({"input": "x", "text": "x"}, "text"),
    ({"input": [{"role": {"a": 1}, "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": ["user"], "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": {"a": 1}}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": ["input_text"], "text": "x"}]}]}, "input[0].content[0]"),
])
def test_a_bad_field_is_a_400_naming_it(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as err:
        chat(**body)
    assert err.value.status == 400 and err.value.param == param


def parse(stream: bytes) -> list[dict]:
    out = []
    for frame in stream.decode().strip().split("\n\n"):
        head, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        out.append(event)
    return out


def test_a_stream_renders_reasoning_text_and_function_calls_as_items_in_order() -> None:
    stream = ResponseStream(ResponseShell({"model": "asked"}))
    events = [ReasoningDelta("hmm"), TextDelta("Hi"), ToolCallDelta(index=0, id="c1", name="now", arguments='{"a"'),
              ToolCallDelta(index=0, arguments=":1}"), Usage(prompt_tokens=2, completion_tokens=3), Finish("tool_calls")]
    frames = parse(stream.start() + b"".join(stream.render(e) for e in events))
    assert [f["sequence_number"] for f in frames] == list(range(len(frames)))
    assert [f["type"] for f in frames] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [f["output_index"] for f in frames if f["type"] == "response.output_item.added"] == [0, 1, 2]
    done = frames[-1]["response"]
    assert done["status"] == "completed" and done["usage"]["total_tokens"] == 5
    reasoning, message, call = done["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "hmm"}]
    assert message["content"][0]["text"] == "Hi"
    assert (call["type"], call["call_id"], call["name"], call["arguments"]) == ("function_call", "c1", "now", '{"a":1}')


def test_a_broken_stream_ends_with_response_failed() -> None:
    stream = ResponseStream(ResponseShell({"model": "asked"}))
    frames = parse(stream.start() + stream.render(TextDelta("Hi")) + stream.fail("engine died"))
    assert frames[-2]["type"] == "response.output_item.done" and frames[-2]["item"]["status"] == "incomplete"
    assert frames[-1]["type"] == "response.failed"
    assert frames[-1]["response"]["error"] == {"code": "server_error", "message": "engine died"}


def test_a_whole_response_lists_function_calls_after_the_message() -> None:
    done = Completion(text="", finish="tool_calls", tool_calls=[ToolCall(id="c1", name="now", arguments="{}")])
    reply = whole_response(ResponseShell({"model": "asked", "tools": [{"type": "function", "name": "now"}]}), done)
    assert reply["status"] == "completed" and reply["model"] == "asked"
    assert [item["type"] for item in reply["output"]] == ["function_call"]
    assert reply["output"][0]["call_id"] == "c1" and reply["tools"][0]["name"] == "now"


def test_hosted_tools_are_left_out_and_function_tools_kept() -> None:
    out = chat(input="x", tools=[{"type": "web_search"}, {"type": "local_shell"},
                                 {"type": "function", "name": "now", "parameters": {"type": "object"}}])
    assert [t["function"]["name"] for t in out["tools"]] == ["now"]


def test_a_function_call_output_skips_parts_whose_type_is_not_a_string() -> None:
    out = chat(input=[{"type": "function_call_output", "call_id": "c1",
                       "output": [{"type": ["input_text"], "text": "no"}, {"type": "input_text", "text": "yes"}]}])
    assert out["messages"][0]["content"] == "yes"


def test_keep_alive_reaches_the_internal_request() -> None:
    assert to_chat({"model": "m", "input": "x", "keep_alive": "10m"}, "canonical").keep_alive == "10m"
