"""Internal events as OpenAI chat completions: the chunks of a stream, or one whole answer.

The /v1 chat relay passes the engine's own bytes; these render the answers
LMForge makes itself from events (a thinking budget's two calls). Reasoning is
`reasoning_content`, as llama-server, vLLM and DeepSeek write it; the thinking
workflow's status is an `lmforge` field on an empty chunk, which clients ignore.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from gateway.dataplane.collect import Completion
from gateway.dataplane.model import Event, Finish, ReasoningDelta, Status, TextDelta, ToolCallDelta, Usage
from gateway.errors import ApiError
from gateway.upstream import error_frame

_encode = msgspec.json.encode
DONE = b"data: [DONE]\n\n"


def usage_of(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


class ChatStream:
    """One streamed chat completion (gateway/dataplane/respond.py's Renderer)."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage = Usage()
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model}
        # Every delta chunk shares these bytes; only its delta differs.
        self._before = b"data: " + _encode(self.head)[:-1] + b',"choices":[{"index":0,"delta":'
        self._after = b',"finish_reason":null}]}\n\n'

    def start(self) -> bytes:
        return self._delta({"role": "assistant", "content": ""})

    def render(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return self._delta({"content": event.text})
        if isinstance(event, ReasoningDelta):
            return self._delta({"reasoning_content": event.text})
        if isinstance(event, ToolCallDelta):
            return self._delta({"tool_calls": [_tool_delta(event)]})
        if isinstance(event, Usage):
            self.usage = event
            return b""
        if isinstance(event, Status):
            return self._chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": None}],
                                "lmforge": msgspec.to_builtins(event)})
        if isinstance(event, Finish):
            out = self._chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": event.reason}]})
            if self.include_usage:
                out += self._chunk({"choices": [], "usage": usage_of(self.usage)})
            return out + DONE
        return b""

    def fail(self, message: str) -> bytes:
        return error_frame(ApiError(502, message, code="engine_failed"))

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._before + _encode(delta) + self._after

    def _chunk(self, fields: dict[str, Any]) -> bytes:
        return b"data: " + _encode({**self.head, **fields}) + b"\n\n"


def _tool_delta(event: ToolCallDelta) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": event.arguments}
    out: dict[str, Any] = {"index": event.index, "function": function}
    if event.id is not None:
        out |= {"id": event.id, "type": "function"}
    if event.name is not None:
        function["name"] = event.name
    return out


def whole_chat(done: Completion, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": done.text if done.text or not done.tool_calls else None,
                               "reasoning_content": done.reasoning or None}
    if done.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in done.tool_calls]
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message, "finish_reason": done.finish}],
            "usage": usage_of(done.usage)}
