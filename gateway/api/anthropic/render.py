"""Internal events as Anthropic's answer: the whole message, or its typed SSE events block by block.

The stream opens a content block when the kind of delta changes (thinking,
text, or a new tool call) and closes the one before it, as Anthropic's own
stream does. The engine reports token counts only at the end, so
`message_start` carries 0 input tokens and `message_delta` the real counts
(Anthropic's clients take `input_tokens` from either).
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from gateway.dataplane.collect import Completion, arguments_object
from gateway.dataplane.model import Event, Finish, ReasoningDelta, Status, TextDelta, ToolCallDelta, Usage
from gateway.sse import frame

_encode = msgspec.json.encode
STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}
EMPTY = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": "", "signature": ""}}


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_reason(finish: str, stop_word: str | None, tool_calls: bool) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence from the engine's finish reason and stop string."""
    if tool_calls and finish != "length":
        return "tool_use", None
    if finish == "stop" and stop_word:
        return "stop_sequence", stop_word
    return STOP_REASONS.get(finish, "end_turn"), None


def whole_message(done: Completion, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if done.reasoning:
        content.append({"type": "thinking", "thinking": done.reasoning, "signature": ""})
    if done.text:
        content.append({"type": "text", "text": done.text})
    for call in done.tool_calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name,
                        "input": arguments_object(call)})
    reason, sequence = stop_reason(done.finish, done.stop_word, bool(done.tool_calls))
    return {"id": message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": sequence,
            "usage": {"input_tokens": done.usage.prompt_tokens, "output_tokens": done.usage.completion_tokens}}


def error_event(message: str) -> bytes:
    return frame("error", {"type": "error", "error": {"type": "api_error", "message": message}})


class MessageStream:
    """One streamed message: `start()`, then `render(event)` for each engine event, in order."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.index = -1
        self.block: tuple[str, int] | None = None  # ("text" | "thinking" | "tool_use", tool call index)
        self.delta_head = b""  # the bytes before a delta's own text, for the open block
        self.usage = Usage()
        self.tool_calls = False

    def start(self) -> bytes:
        message = {"id": message_id(), "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return frame("message_start", {"type": "message_start", "message": message}) + frame("ping", {"type": "ping"})

    def fail(self, message: str) -> bytes:
        return error_event(message)

    def render(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return self._delta(("text", 0), event.text)
        if isinstance(event, ReasoningDelta):
            return self._delta(("thinking", 0), event.text)
        if isinstance(event, ToolCallDelta):
            return self._tool(event)
        if isinstance(event, Usage):
            self.usage = event
            return b""
        if isinstance(event, Finish):
            return self._finish(event)
        if isinstance(event, Status):
            # A ping, which Anthropic's clients skip, carrying the thinking workflow's note.
            return frame("ping", {"type": "ping", "lmforge": msgspec.to_builtins(event)})
        return b""

    def _delta(self, block: tuple[str, int], text: str) -> bytes:
        opened = b"" if self.block == block else self._open(block, EMPTY[block[0]])
        return opened + self.delta_head + _encode(text) + b"}}\n\n"

    def _tool(self, event: ToolCallDelta) -> bytes:
        out = b""
        block = ("tool_use", event.index)
        if self.block != block:
            self.tool_calls = True
            call_id = event.id or f"toolu_{uuid.uuid4().hex[:24]}"
            out = self._open(block, {"type": "tool_use", "id": call_id, "name": event.name or "", "input": {}})
        if event.arguments:
            out += self.delta_head + _encode(event.arguments) + b"}}\n\n"
        return out

    def _open(self, block: tuple[str, int], content_block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.block = block
        field = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}[block[0]]
        key = {"text": "text", "thinking": "thinking", "tool_use": "partial_json"}[block[0]]
        self.delta_head = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                           b'"delta":{"type":"%s","%s":' % (self.index, field.encode(), key.encode()))
        start = {"type": "content_block_start", "index": self.index, "content_block": content_block}
        return out + frame("content_block_start", start)

    def _close(self) -> bytes:
        if self.block is None:
            return b""
        self.block = None
        return frame("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _finish(self, event: Finish) -> bytes:
        reason, sequence = stop_reason(event.reason, event.stop_word, self.tool_calls)
        usage = {"input_tokens": self.usage.prompt_tokens, "output_tokens": self.usage.completion_tokens}
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
        return self._close() + frame("message_delta", delta) + frame("message_stop", {"type": "message_stop"})
