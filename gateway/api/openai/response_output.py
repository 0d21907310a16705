"""Internal events as a /v1/responses answer: the response object, or its typed `response.*` SSE events.

Output items come in the order the engine produced them: a reasoning item,
a message item, one function_call item per tool call. The stream opens an
item when the kind of delta changes and closes the one before it, emitting
the added/delta/done events (numbered by `sequence_number`) the official
clients build their snapshot from.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from gateway.dataplane.collect import Completion
from gateway.dataplane.model import Event, Finish, ReasoningDelta, TextDelta, ToolCall, ToolCallDelta, Usage
from gateway.sse import frame

_encode = msgspec.json.encode


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseShell:
    """The response object's fields that come from the request; `render` fills in status, output and usage."""

    def __init__(self, body: dict[str, Any]) -> None:
        fmt = (body.get("text") or {}).get("format") or {"type": "text"}
        self.fields: dict[str, Any] = {
            "id": new_id("resp"), "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "model": body["model"], "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": False, "temperature": body.get("temperature"),
            "text": {"format": fmt},
            "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
            "top_p": body.get("top_p"), "truncation": "disabled", "usage": None, "metadata": body.get("metadata") or {},
        }

    def render(self, output: list[dict[str, Any]], finish: str | None, usage: Usage | None,
               error: str | None = None) -> dict[str, Any]:
        out = {**self.fields, "output": output}
        if error is not None:
            out["status"], out["error"] = "failed", {"code": "server_error", "message": error}
        elif finish == "length":
            out["status"], out["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
        elif finish is not None:
            out["status"] = "completed"
        if usage is not None:
            out["usage"] = usage_of(usage)
        return out


def usage_of(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if status != "in_progress" else []
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content, "status": status}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [output_text(text)] if status != "in_progress" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call.id, "name": call.name,
            "arguments": call.arguments, "status": status}


def whole_response(shell: ResponseShell, done: Completion) -> dict[str, Any]:
    status = "incomplete" if done.finish == "length" else "completed"
    output = []
    if done.reasoning:
        output.append(reasoning_item(new_id("rs"), done.reasoning, status))
    if done.text or not done.tool_calls:
        output.append(message_item(new_id("msg"), done.text, status))
    output += [call_item(new_id("fc"), call, "completed") for call in done.tool_calls]
    return shell.render(output, done.finish, done.usage)


class ResponseStream:
    """One streamed response: `start()`, then `render(event)` per engine event, `fail(message)` if it broke."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: tuple[str, int] | None = None  # ("reasoning" | "message" | "function_call", tool index)
        self.item_id = ""
        self.parts: list[str] = []  # the open item's text or arguments so far
        self.call = ToolCall(id="", name="", arguments="")
        self.delta_head = b""
        self.usage: Usage | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return frame(kind, data)

    def start(self) -> bytes:
        response = self.shell.render([], None, None)
        return self.event("response.created", response=response) + self.event("response.in_progress", response=response)

    def render(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return self._delta(("message", 0), event.text)
        if isinstance(event, ReasoningDelta):
            return self._delta(("reasoning", 0), event.text)
        if isinstance(event, ToolCallDelta):
            return self._call(event)
        if isinstance(event, Usage):
            self.usage = event
            return b""
        if isinstance(event, Finish):
            return self._finish(event.reason)
        return b""

    def fail(self, message: str) -> bytes:
        out = self._close("incomplete")
        return out + self.event("response.failed", response=self.shell.render(self.output, None, self.usage, message))

    def _delta(self, kind: tuple[str, int], text: str) -> bytes:
        out = b"" if self.open == kind else self._open(kind)
        self.parts.append(text)
        seq = self.seq
        self.seq += 1
        return out + self.delta_head + b"%d,\"delta\":" % seq + _encode(text) + b"}\n\n"

    def _call(self, delta: ToolCallDelta) -> bytes:
        kind = ("function_call", delta.index)
        out = b"" if self.open == kind else self._open(kind, delta)
        return out + (self._delta(kind, delta.arguments) if delta.arguments else b"")

    def _open(self, kind: tuple[str, int], delta: ToolCallDelta | None = None) -> bytes:
        out = self._close("completed")
        self.open, self.parts, index = kind, [], len(self.output)
        where = {"output_index": index}
        if kind[0] == "function_call":
            self.item_id = new_id("fc")
            self.call = ToolCall(id=(delta and delta.id) or new_id("call"), name=(delta and delta.name) or "",
                                 arguments="")
            out += self.event("response.output_item.added", item=call_item(self.item_id, self.call, "in_progress"),
                              **where)
            head = {"type": "response.function_call_arguments.delta", "item_id": self.item_id, **where}
        else:
            reasoning = kind[0] == "reasoning"
            self.item_id = new_id("rs" if reasoning else "msg")
            item = (reasoning_item if reasoning else message_item)(self.item_id, "", "in_progress")
            part = {"type": "reasoning_text", "text": ""} if reasoning else output_text("")
            out += self.event("response.output_item.added", item=item, **where)
            out += self.event("response.content_part.added", item_id=self.item_id, content_index=0, part=part, **where)
            kind_name = "response.reasoning_text.delta" if reasoning else "response.output_text.delta"
            head = {"type": kind_name, "item_id": self.item_id, "content_index": 0, **where}
            if not reasoning:
                head["logprobs"] = []
        # Every delta of this item shares these bytes; only its sequence number and text differ.
        self.delta_head = (b"event: " + head["type"].encode() + b"\ndata: " + _encode(head)[:-1]
                           + b',"sequence_number":')
        return out

    def _close(self, status: str) -> bytes:
        if self.open is None:
            return b""
        kind, text = self.open[0], "".join(self.parts)
        where = {"item_id": self.item_id, "output_index": len(self.output)}
        self.open = None
        if kind == "function_call":
            self.call.arguments = text or "{}"
            item = call_item(self.item_id, self.call, status)
            out = self.event("response.function_call_arguments.done", name=self.call.name,
                             arguments=self.call.arguments, **where)
        elif kind == "reasoning":
            item = reasoning_item(self.item_id, text, status)
            out = self.event("response.reasoning_text.done", content_index=0, text=text, **where)
            out += self.event("response.content_part.done", content_index=0, part=item["content"][0], **where)
        else:
            item = message_item(self.item_id, text, status)
            out = self.event("response.output_text.done", content_index=0, text=text, logprobs=[], **where)
            out += self.event("response.content_part.done", content_index=0, part=item["content"][0], **where)
        self.output.append(item)
        del where["item_id"]
        return out + self.event("response.output_item.done", item=item, **where)

    def _finish(self, reason: str) -> bytes:
        status = "incomplete" if reason == "length" else "completed"
        out = self._close(status)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return out + self.event(kind, response=self.shell.render(self.output, reason, self.usage))
