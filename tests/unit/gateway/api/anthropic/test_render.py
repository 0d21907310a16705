"""Internal events rendered as Anthropic's whole message and typed stream, including tool_use and thinking."""

from __future__ import annotations

import json

from gateway.api.anthropic.render import MessageStream, stop_reason, whole_message
from gateway.dataplane.collect import Completion
from gateway.dataplane.model import Finish, ReasoningDelta, TextDelta, ToolCall, ToolCallDelta, Usage


def parse(stream: bytes) -> list[tuple[str, dict]]:
    out = []
    for frame in stream.decode().strip().split("\n\n"):
        head, data = frame.split("\n")
        out.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_stop_reason_from_the_engines_finish() -> None:
    assert stop_reason("length", None, False) == ("max_tokens", None)
    assert stop_reason("stop", None, False) == ("end_turn", None)
    assert stop_reason("stop", "END", False) == ("stop_sequence", "END")
    assert stop_reason("tool_calls", None, True) == ("tool_use", None)
    assert stop_reason("length", None, True) == ("max_tokens", None)


def test_a_stream_opens_a_block_per_kind_and_per_tool_call() -> None:
    stream = MessageStream("asked")
    events = [ReasoningDelta("think"), TextDelta("Hi"), TextDelta("!"),
              ToolCallDelta(index=0, id="c1", name="now", arguments='{"tz":'), ToolCallDelta(index=0, arguments='"UTC"}'),
              ToolCallDelta(index=1, id="c2", name="later"), Usage(prompt_tokens=7, completion_tokens=9),
              Finish("tool_calls")]
    frames = parse(stream.start() + b"".join(stream.render(e) for e in events))
    assert all(name == data["type"] for name, data in frames)
    starts = [d["content_block"] for n, d in frames if n == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": ""},
                      {"type": "tool_use", "id": "c1", "name": "now", "input": {}},
                      {"type": "tool_use", "id": "c2", "name": "later", "input": {}}]
    deltas = [(d["index"], d["delta"]) for n, d in frames if n == "content_block_delta"]
    assert deltas == [(0, {"type": "thinking_delta", "thinking": "think"}), (1, {"type": "text_delta", "text": "Hi"}),
                      (1, {"type": "text_delta", "text": "!"}),
                      (2, {"type": "input_json_delta", "partial_json": '{"tz":'}),
                      (2, {"type": "input_json_delta", "partial_json": '"UTC"}'})]
    stops = [d["index"] for n, d in frames if n == "content_block_stop"]
    assert stops == [0, 1, 2, 3]
    assert [n for n, _ in frames][-2:] == ["message_delta", "message_stop"]
    assert frames[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert frames[-2][1]["usage"] == {"input_tokens": 7, "output_tokens": 9}


def test_an_empty_answer_still_ends_the_message() -> None:
    stream = MessageStream("asked")
    names = [n for n, _ in parse(stream.start() + stream.render(Finish("stop")))]
    assert names == ["message_start", "ping", "message_delta", "message_stop"]


def test_a_whole_message_orders_thinking_text_then_tool_use() -> None:
    done = Completion(text="Hi", reasoning="hmm", finish="tool_calls", usage=Usage(prompt_tokens=3, completion_tokens=4),
                      tool_calls=[ToolCall(id="c1", name="now", arguments='{"tz": "UTC"}'),
                                  ToolCall(id="c2", name="bad", arguments="not json")])
    msg = whole_message(done, "asked")
    assert msg["model"] == "asked" and msg["id"].startswith("msg_")
    assert msg["content"] == [{"type": "thinking", "thinking": "hmm", "signature": ""}, {"type": "text", "text": "Hi"},
                              {"type": "tool_use", "id": "c1", "name": "now", "input": {"tz": "UTC"}},
                              {"type": "tool_use", "id": "c2", "name": "bad", "input": {}}]
    assert msg["stop_reason"] == "tool_use" and msg["usage"] == {"input_tokens": 3, "output_tokens": 4}
