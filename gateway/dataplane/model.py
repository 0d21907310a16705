"""The one internal request and event model every dialect translates to and from.

A dialect's codec turns its request into a `ChatRequest` (or `TextRequest` for
raw prompts), the engine client turns the engine's stream into `Event`s, and
the codec renders those events in its own wire format. Engines speak OpenAI,
so `engine_body()` is the only place that knows the engine's field names.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ToolCall(msgspec.Struct, kw_only=True):
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it


class Message(msgspec.Struct, kw_only=True):
    role: str  # system, user, assistant, tool
    # Plain text, or OpenAI content parts ({"type": "text"} / {"type": "image_url"}).
    content: str | list[dict[str, Any]] = ""
    tool_calls: list[ToolCall] = []
    tool_call_id: str | None = None
    reasoning: str | None = None


def flatten(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A message's content parts as plain text when there is no image: every chat template reads a string."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


class Tool(msgspec.Struct, kw_only=True):
    name: str
    description: str = ""
    parameters: dict[str, Any] = {}


class Sampling(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Generation settings; None means the engine's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    typical_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None


class ThinkPlan(msgspec.Struct, kw_only=True):
    """How a thinking request is served: two engine calls on one lease (gateway/thinking/workflow.py)."""

    budget: int  # tokens the first call may spend thinking
    named: bool = False  # the request named the budget (else a level's, from config)
    answer_tokens: int  # the answer's own budget, when the request sets no max_tokens
    stream_deltas: bool = True  # a streamed answer carries the reasoning as it comes


class ChatRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: list[Message]
    sampling: Sampling = msgspec.field(default_factory=Sampling)
    tools: list[Tool] = []
    tool_choice: str | dict[str, Any] | None = None  # OpenAI's form: "auto", "none", "required", {...}
    # OpenAI's form: {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}
    response_format: dict[str, Any] | None = None
    keep_alive: str | float | None = None
    num_ctx: int = 0  # 0: the model's default context
    extra: dict[str, Any] = {}  # engine fields passed as they are (e.g. chat_template_kwargs)
    thinking: ThinkPlan | None = None  # a thinking budget: the two-call workflow serves it
    split_tags: bool = False  # the model may write its reasoning inline, in <think> tags: split it out


class TextRequest(msgspec.Struct, kw_only=True):
    """A raw prompt, continued as text (OpenAI completions, Ollama generate with `raw`)."""

    model: str
    prompt: str
    suffix: str | None = None
    sampling: Sampling = msgspec.field(default_factory=Sampling)
    response_format: dict[str, Any] | None = None
    keep_alive: str | float | None = None
    num_ctx: int = 0
    extra: dict[str, Any] = {}


# --- events, in the order an engine stream produces them ---


class TextDelta(msgspec.Struct):
    text: str


class ReasoningDelta(msgspec.Struct):
    text: str


class ToolCallDelta(msgspec.Struct, kw_only=True):
    """A fragment of tool call `index`: the first carries id and name, later ones more arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Finish(msgspec.Struct):
    reason: str  # "stop", "length", "tool_calls"
    stop_word: str | None = None  # the stop string that ended the answer, when the engine says which


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_ms: float = 0.0  # the engine's own timings, when it reports them
    predicted_ms: float = 0.0
    reasoning_tokens: int = 0  # of completion_tokens, those spent thinking (counted by the thinking workflow)


class Status(msgspec.Struct, kw_only=True):
    """The thinking workflow's note before its second call: "call2_prefill" (the answer continues from the
    reasoning) or "answer_fallback" (the first call produced nothing: a plain answer). Rendered as an
    `lmforge` field standard clients ignore."""

    status: str
    reasoning_len: int  # characters of reasoning the first call produced
    remaining_tokens: int  # the second call's budget


Event = TextDelta | ReasoningDelta | ToolCallDelta | Finish | Usage | Status


def engine_body(req: ChatRequest | TextRequest, *, stream: bool = True) -> dict[str, Any]:
    """The OpenAI-shaped body an engine takes for this request."""
    body: dict[str, Any] = {"model": req.model}
    if isinstance(req, ChatRequest):
        body["messages"] = [_message(m) for m in req.messages]
        if req.tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters or {"type": "object"}}}
                for t in req.tools]
        if req.tool_choice is not None:
            body["tool_choice"] = req.tool_choice
    else:
        body["prompt"] = req.prompt
        if req.suffix:
            body["suffix"] = req.suffix
    body.update(msgspec.to_builtins(req.sampling))
    if req.sampling.stop:
        body["verbose"] = True  # llama-server names the stop string it hit (Finish.stop_word) only when verbose
    if req.response_format is not None and isinstance(req, ChatRequest):
        body["response_format"] = req.response_format
    elif req.response_format is not None:
        # llama-server's text completions ignore response_format; they take the schema itself.
        body["json_schema"] = (req.response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
    body.update(req.extra)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in m.tool_calls]
        if not m.content:
            out["content"] = None
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.reasoning:
        out["reasoning_content"] = m.reasoning
    return out
