"""A whole answer from an event stream: what non-streamed responses in every dialect are built from."""

from __future__ import annotations

from typing import AsyncIterator

import msgspec

from gateway.dataplane.model import Event, Finish, ReasoningDelta, TextDelta, ToolCall, ToolCallDelta, Usage


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
