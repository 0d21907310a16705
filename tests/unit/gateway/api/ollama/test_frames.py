"""Ollama's wire objects out: frames, the final object, whole answers, timestamps and model facts."""

from __future__ import annotations

import json
import re
import time

from gateway.api.ollama.details import digest, human_number, tagged
from gateway.api.ollama.frames import Frames
from gateway.api.ollama.times import FOREVER_S, now, rfc3339
from gateway.dataplane.collect import Completion
from gateway.dataplane.model import ToolCall, Usage
from manager.protocol import ModelEntry

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
USAGE = Usage(prompt_tokens=12, completion_tokens=5, prompt_ms=1.5, predicted_ms=20.25)


def decode(frame: bytes) -> dict:
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    return json.loads(frame)


def test_chat_and_generate_deltas() -> None:
    chat = Frames("m:latest", chat=True, started_ns=time.perf_counter_ns())
    frame = decode(chat.text('say "hi"\n'))
    assert STAMP.match(frame.pop("created_at"))
    assert frame == {"model": "m:latest", "message": {"role": "assistant", "content": 'say "hi"\n'}, "done": False}
    assert decode(chat.thinking("hmm"))["message"] == {"role": "assistant", "content": "", "thinking": "hmm"}
    generate = Frames("m", chat=False, started_ns=0)
    assert decode(generate.text("x"))["response"] == "x"
    thinking = decode(generate.thinking("y"))
    assert (thinking["response"], thinking["thinking"], thinking["done"]) == ("", "y", False)


def test_the_final_object_carries_the_reason_and_every_counter() -> None:
    started = time.perf_counter_ns()
    final = decode(Frames("m", chat=True, started_ns=started).final("length", USAGE, load_s=0.5))
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert (final["prompt_eval_count"], final["eval_count"]) == (12, 5)
    assert (final["prompt_eval_duration"], final["eval_duration"]) == (1_500_000, 20_250_000)
    assert final["load_duration"] == 500_000_000
    assert 0 < final["total_duration"] < time.perf_counter_ns() - started + 1


def test_a_turn_that_called_tools_ends_with_stop_and_sends_arguments_as_objects() -> None:
    frames = Frames("m", chat=True, started_ns=0)
    calls = [ToolCall(id="call_a", name="weather", arguments='{"city": "Paris"}'),
             ToolCall(id="call_b", name="broken", arguments="{not json")]
    frame = decode(frames.tool_calls(calls))
    assert frame["done"] is False and frame["message"]["content"] == ""
    assert frame["message"]["tool_calls"] == [
        {"id": "call_a", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}},
        {"id": "call_b", "function": {"index": 1, "name": "broken", "arguments": {}}}]
    assert decode(frames.final("tool_calls", Usage(), 0.0))["done_reason"] == "stop"


def test_whole_answers() -> None:
    done = Completion(text="hello", reasoning="because", finish="stop", usage=USAGE,
                      tool_calls=[ToolCall(id="c", name="f", arguments="{}")])
    chat = json.loads(Frames("m", chat=True, started_ns=0).whole(done, 0.0))
    assert chat["message"] == {"role": "assistant", "content": "hello", "thinking": "because",
                               "tool_calls": [{"id": "c", "function": {"index": 0, "name": "f", "arguments": {}}}]}
    assert chat["done"] is True and chat["eval_count"] == 5
    generate = json.loads(Frames("m", chat=False, started_ns=0).whole(done, 0.0))
    assert (generate["response"], generate["thinking"], generate["done_reason"]) == ("hello", "because", "stop")
    assert json.loads(Frames("m", chat=False, started_ns=0).bare("load"))["done_reason"] == "load"
    assert Frames.error("engine died") == b'{"error":"engine died"}\n'


def test_timestamps() -> None:
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500000000Z"
    assert rfc3339(time.time() + FOREVER_S).startswith("23")  # Ollama's "kept forever": about year 2318
    assert STAMP.match(now())


def test_model_facts() -> None:
    assert tagged("gemma3") == "gemma3:latest" and tagged("owner/tiny:cycle") == "owner/tiny:cycle"
    assert tagged("hf.co/org:x/model") == "hf.co/org:x/model:latest"
    assert [human_number(n) for n in (8_000_000_000, 7_615_616_512, 268_098_176, 22_000_000, 108_480, 999)] == \
        ["8B", "7.6B", "268.10M", "22M", "108K", "999"]
    one = ModelEntry(name="a", path="/m/x.gguf", sha256="ab" * 32)
    other = ModelEntry(name="b", path="/m/x.gguf", sha256="ab" * 32)
    assert digest(one) != digest(other) and len(digest(one)) == 64
