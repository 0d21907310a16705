"""The engine client's reading of an SSE stream: data objects per read, where it ends, and whole answers."""

from __future__ import annotations

from typing import AsyncIterator

from gateway.dataplane.collect import collect
from gateway.dataplane.engine import EngineBroke, _data_objects, events_of
from gateway.dataplane.model import Event, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage


def test_every_data_line_of_a_read_is_one_object_and_other_lines_are_skipped() -> None:
    lines = [b'data: {"a": 1}', b"", b": comment", b'data:{"a": 2}', b"event: x"]
    assert _data_objects(lines) == ([{"a": 1}, {"a": 2}], False)


def test_done_ends_the_stream_after_the_objects_before_it() -> None:
    assert _data_objects([b'data: {"a": 1}', b"data: [DONE]", b'data: {"a": 2}']) == ([{"a": 1}], True)


def test_an_engine_error_ends_the_stream_after_the_objects_before_it() -> None:
    objects, end = _data_objects([b'data: {"a": 1}', b'data: {"error": {"message": "context full"}}'])
    assert objects == [{"a": 1}] and isinstance(end, EngineBroke) and str(end) == "context full"


def test_a_chunk_gives_reasoning_text_tool_call_and_finish_events() -> None:
    chunk = {"choices": [{"index": 0, "finish_reason": "tool_calls", "delta": {
        "reasoning_content": "hm", "content": "ok",
        "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "now", "arguments": "{}"}}]}}]}
    events = events_of(chunk)
    assert [type(e).__name__ for e in events] == ["ReasoningDelta", "TextDelta", "ToolCallDelta", "Finish"]
    assert events[-1] == Finish("tool_calls")


def test_reasoning_is_read_under_either_name_engines_give_it() -> None:
    """reasoning_content (llama-server, SGLang, vLLM) or reasoning (mlx_lm.server)."""
    for field in ("reasoning_content", "reasoning"):
        assert events_of({"choices": [{"index": 0, "delta": {field: "hm"}}]}) == [ReasoningDelta("hm")]


async def test_a_whole_answer_is_collected_across_reads() -> None:
    async def reads() -> AsyncIterator[list[Event]]:
        yield [TextDelta("he"), ToolCallDelta(index=0, id="c1", name="now", arguments='{"tz":')]
        yield [TextDelta("llo"), ToolCallDelta(index=0, arguments='"UTC"}')]
        yield [Usage(prompt_tokens=3, completion_tokens=2), Finish("length")]

    done = await collect(reads())
    assert (done.text, done.finish, done.usage.completion_tokens) == ("hello", "length", 2)
    assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == [("c1", "now", '{"tz":"UTC"}')]
