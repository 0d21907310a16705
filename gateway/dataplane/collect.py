"""A whole answer from an event stream: what non-streamed responses in every dialect are built from."""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator

import msgspec

from gateway.dataplane.model import Event, Finish, ReasoningDelta, TextDelta, ToolCall, ToolCallDelta, Usage

log = logging.getLogger("lmforge.gateway")


class Completion(msgspec.Struct, kw_only=True):
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = []
    finish: str = "stop"
    stop_word: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)


class ToolCalls:
    """Tool-call fragments merged by index into whole calls; calls without a name are dropped."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, str]] = {}

    def add(self, delta: ToolCallDelta) -> None:
        part = self._parts.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        part["id"] = delta.id or part["id"]
        part["name"] = delta.name or part["name"]
        part["arguments"] += delta.arguments

    def calls(self) -> list[ToolCall]:
        return [ToolCall(id=p["id"] or f"call_{i}", name=p["name"], arguments=p["arguments"] or "{}")
                for i, p in sorted(self._parts.items()) if p["name"]]


async def collect(events: AsyncIterator[list[Event]]) -> Completion:
    text: list[str] = []
    reasoning: list[str] = []
    calls = ToolCalls()
    done = Completion()
    async for batch in events:
        for event in batch:
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, ReasoningDelta):
                reasoning.append(event.text)
            elif isinstance(event, ToolCallDelta):
                calls.add(event)
            elif isinstance(event, Usage):
                done.usage = event
            elif isinstance(event, Finish):
                done.finish, done.stop_word = event.reason, event.stop_word
    done.text, done.reasoning, done.tool_calls = "".join(text), "".join(reasoning), calls.calls()
    return done


def arguments_object(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as an object, for dialects that carry them so (Anthropic, Ollama); {} when the
    model wrote something that is not a JSON object."""
    try:
        value = json.loads(call.arguments) if call.arguments else {}
    except (ValueError, RecursionError):  # a model may write any text, nested arbitrarily deep
        value = None
    if not isinstance(value, dict):
        log.warning("tool call %s: the model's arguments are not a JSON object (%.200r); sent as {}",
                    call.name, call.arguments)
        return {}
    return value
