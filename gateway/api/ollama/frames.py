"""Ollama's responses out: the NDJSON frames of a stream, its one final object, whole answers, errors.

Chat carries text under `message.content`, generate under `response`. A stream
has exactly one `done: true` object, with the reason and every counter and
duration taken from the engine's usage and timings. Per-token frames are
spliced from pre-encoded bytes: they are most of the work of a stream.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from gateway.api.ollama.times import now
from gateway.dataplane import progress
from gateway.dataplane.collect import Completion, ToolCalls, arguments_object
from gateway.dataplane.model import Event, ReasoningDelta, Status, TextDelta, ToolCall, ToolCallDelta, Usage

_encode = msgspec.json.encode
# Ollama ends a turn that called tools with "stop", not OpenAI's "tool_calls".
DONE_REASONS = {"tool_calls": "stop"}


class Frames:
    """The wire objects of one response, for the model name the client asked for."""

    def __init__(self, model: str, *, chat: bool, started_ns: int) -> None:
        self.model = model
        self.chat = chat
        self.started_ns = started_ns  # time.perf_counter_ns() when the request came in
        self._head = b'{"model":' + _encode(model) + b',"created_at":"'
        if chat:
            self._text = b'","message":{"role":"assistant","content":'
            self._thinking = b'","message":{"role":"assistant","content":"","thinking":'
            self._tail = b'},"done":false}\n'
        else:
            self._text = b'","response":'
            self._thinking = b'","response":"","thinking":'
            self._tail = b',"done":false}\n'

    def text(self, text: str) -> bytes:
        return b"".join((self._head, now().encode(), self._text, _encode(text), self._tail))

    def thinking(self, text: str) -> bytes:
        return b"".join((self._head, now().encode(), self._thinking, _encode(text), self._tail))

    def tool_calls(self, calls: list[ToolCall]) -> bytes:
        """Ollama sends a turn's tool calls whole, in one frame, with arguments as objects."""
        frame = self._start(done=False)
        frame["message"]["tool_calls"] = [tool_call(c, i) for i, c in enumerate(calls)]
        return _encode(frame) + b"\n"

    def final(self, finish: str, usage: Usage, load_s: float) -> bytes:
        return _encode(self._start(done=True, reason=finish) | self.counters(usage, load_s)) + b"\n"

    def whole(self, done: Completion, load_s: float) -> bytes:
        """A non-streamed answer: one object with the whole text and every counter."""
        out = self._start(done=True, reason=done.finish)
        if self.chat:
            message = out["message"]
            message["content"] = done.text
            if done.reasoning:
                message["thinking"] = done.reasoning
            if done.tool_calls:
                message["tool_calls"] = [tool_call(c, i) for i, c in enumerate(done.tool_calls)]
        else:
            out["response"] = done.text
            if done.reasoning:
                out["thinking"] = done.reasoning
        return _encode(out | self.counters(done.usage, load_s))

    def bare(self, reason: str) -> bytes:
        """The answer to a load or unload call: no text, no counters."""
        return _encode(self._start(done=True, reason=reason))

    def status(self, note: dict[str, Any]) -> bytes:
        """A load note in a started stream (gateway/dataplane/progress.py): a status line, as Ollama's pull writes
        them, with an empty message and done false, which its clients render as nothing."""
        return self._note({"status": progress.text_of(note), "lmforge": {"load": note}})

    def thinking_status(self, status: Status) -> bytes:
        """The thinking workflow's note before its second call, in the same empty, not-done frame."""
        return self._note({"lmforge": msgspec.to_builtins(status)})

    def _note(self, fields: dict[str, Any]) -> bytes:
        return _encode(self._start(done=False) | fields) + b"\n"

    @staticmethod
    def error(message: str) -> bytes:
        """The last line of a stream that failed after it started."""
        return _encode({"error": message}) + b"\n"

    def counters(self, usage: Usage, load_s: float) -> dict[str, int]:
        return {
            "total_duration": time.perf_counter_ns() - self.started_ns,
            "load_duration": int(load_s * 1e9),
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": int(usage.prompt_ms * 1e6),
            "eval_count": usage.completion_tokens,
            "eval_duration": int(usage.predicted_ms * 1e6),
        }

    def _start(self, *, done: bool, reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": now()}
        if self.chat:
            out["message"] = {"role": "assistant", "content": ""}
        else:
            out["response"] = ""
        out["done"] = done
        if reason is not None:
            out["done_reason"] = DONE_REASONS.get(reason, reason)
        return out


class FrameStream:
    """A streamed answer (gateway/dataplane/respond.py's Renderer): deltas as they come, tool calls
    whole when the turn ends (Ollama never streams them in pieces), then the one final object."""

    def __init__(self, frames: Frames, load_s: float) -> None:
        self.frames, self.load_s = frames, load_s
        self.calls = ToolCalls()
        self.usage = Usage()

    def start(self) -> bytes:
        return b""

    def render(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return self.frames.text(event.text)
        if isinstance(event, ReasoningDelta):
            return self.frames.thinking(event.text)
        if isinstance(event, ToolCallDelta):
            self.calls.add(event)
            return b""
        if isinstance(event, Usage):
            self.usage = event
            return b""
        if isinstance(event, Status):
            return self.frames.thinking_status(event)
        calls = self.calls.calls()
        head = self.frames.tool_calls(calls) if calls else b""
        return head + self.frames.final(event.reason, self.usage, self.load_s)

    def fail(self, message: str) -> bytes:
        return self.frames.error(message)


def tool_call(call: ToolCall, index: int) -> dict[str, Any]:
    """One call as Ollama writes it: arguments an object, not OpenAI's JSON text."""
    return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": arguments_object(call)}}
