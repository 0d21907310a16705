"""OpenAI's /v1/responses, stateless: input items and tools in the internal model, served on a chat engine.

LMForge keeps no response state: `previous_response_id`, `conversation` and
stored prompts are refused with a 400 that says to send the whole
conversation in `input`; `store` is accepted and ignored. Only function
tools run here (other tool types are left out with a log line); any other item type is a 400 naming it.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.api.openai.response_output import ResponseShell, ResponseStream, whole_response
from gateway.dataplane.gates import find_model, require_kind, require_vision
from gateway.dataplane.model import ChatRequest, Message, Sampling, Tool, ToolCall, flatten
from gateway.dataplane.respond import answer
from gateway.dataplane.validate import RESPONSES, check, invalid, read_json, require
from gateway.errors import ApiError
from gateway.keys import LIVE
from gateway.preflight.images import preflight
from gateway.thinking.intent import LEVELS, Intent, read_intent, with_thinking
from manager.protocol import SlotKind

log = logging.getLogger("lmforge.gateway")

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
STATEFUL = {"previous_response_id": "this server keeps no response state; send the whole conversation in input",
            "conversation": "this server keeps no conversations; send the whole conversation in input",
            "prompt": "this server keeps no stored prompts; send instructions and input instead"}


async def create_response(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    check(body, RESPONSES)
    require(body, "model", "input")
    for field, why in STATEFUL.items():
        if body.get(field) is not None:
            raise ApiError(400, f"{field} is not supported: {why}", param=field, code="unsupported_parameter")
    if body.get("background"):
        raise invalid("background", "is not supported: this server keeps no response state to poll")
    if body.get("store"):
        log.info("responses: store=true ignored (LMForge keeps no response state)")
    entry = find_model(request, body["model"])
    require_kind(entry, SlotKind.CHAT)
    req = with_thinking(to_chat(body, entry.name), intent_of(body), entry, request.app[LIVE].current)
    require_vision(entry, req.messages)
    await preflight(request, req.messages, param="input")
    shell = ResponseShell(body)
    return await answer(request, req, streamed=bool(body.get("stream")), renderer=ResponseStream(shell),
                        whole_reply=lambda done: whole_response(shell, done))


def intent_of(body: dict[str, Any]) -> Intent:
    """The thinking fields every dialect takes, and the Responses API's own `reasoning.effort`."""
    intent = read_intent(body)
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if not intent.asked and effort in LEVELS:
        intent.on, intent.level = True, effort
    return intent


def to_chat(body: dict[str, Any], model: str) -> ChatRequest:
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid("instructions", "must be a string")
    messages = [Message(role="system", content=instructions)] if instructions else []
    messages += input_messages(body["input"])
    sampling = Sampling(max_tokens=body.get("max_output_tokens"), temperature=body.get("temperature"),
                        top_p=body.get("top_p"))
    extra = {} if body.get("parallel_tool_calls") is not False else {"parallel_tool_calls": False}
    return ChatRequest(model=model, messages=messages, sampling=sampling, tools=tools_of(body.get("tools")),
                       tool_choice=tool_choice_of(body.get("tool_choice")),
                       response_format=response_format_of(body.get("text")), keep_alive=body.get("keep_alive"),
                       extra=extra)


def input_messages(items: Any) -> list[Message]:
    if isinstance(items, str):
        return [Message(role="user", content=items)]
    if not isinstance(items, list):
        raise invalid("input", "must be a string or an array of input items")
    out: list[Message] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(where, "must be an input item object")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            out.append(message_of(item, where))
        elif kind == "function_call":
            call = ToolCall(id=_string(item, "call_id", where), name=_string(item, "name", where),
                            arguments=item.get("arguments") or "{}")
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":  # one assistant turn: its text, then its calls
                last.tool_calls = [*last.tool_calls, call]
            else:
                out.append(Message(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            out.append(Message(role="tool", content=output_text(item.get("output"), f"{where}.output"),
                               tool_call_id=_string(item, "call_id", where)))
        elif kind == "reasoning":
            continue  # a previous turn's reasoning: templates drop it from history anyway
        else:
            raise invalid(f"{where}.type", f"{kind!r} is not supported; LMForge takes message, function_call "
                          "and function_call_output items")
    return out


def message_of(item: dict[str, Any], where: str) -> Message:
    role = item.get("role")
    role = ROLES.get(role) if isinstance(role, str) else None
    if role is None:
        raise invalid(f"{where}.role", f"must be one of user, assistant, system, developer (got {item.get('role')!r})")
    content = item.get("content")
    if isinstance(content, str):
        return Message(role=role, content=content)
    if not isinstance(content, list):
        raise invalid(f"{where}.content", "must be a string or an array of content parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise invalid(at, "must be a content part object with a string type")
        if kind in TEXT_PARTS or kind == "refusal":
            parts.append({"type": "text", "text": _string(part, "refusal" if kind == "refusal" else "text", at)})
        elif kind == "input_image":
            if not isinstance(part.get("image_url"), str):
                raise invalid(f"{at}.image_url", "is required (a URL or a data: URL); file_id needs stored files")
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise invalid(f"{at}.type", f"{kind!r} is not supported; send input_text, input_image or output_text parts")
    return Message(role=role, content=flatten(parts))


def output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "\n".join(_string(p, "text", f"{where}[{k}]") for k, p in enumerate(output)
                         if isinstance(p, dict) and isinstance(p.get("type"), str) and p["type"] in TEXT_PARTS)
    raise invalid(where, "must be a string or an array of input_text parts")


def tools_of(tools: list[Any] | None) -> list[Tool]:
    out = []
    for i, tool in enumerate(tools or ()):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid(where, "must be an object")
        if tool.get("type") != "function":
            # Hosted tools (web_search, local_shell, custom grammars) have nothing to run them here;
            # agents such as Codex send them on every request, so they are left out, not refused.
            log.info("ignoring %s of type %r: LMForge runs function tools only", where, tool.get("type"))
            continue
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid(f"{where}.parameters", "must be a JSON schema object")
        out.append(Tool(name=_string(tool, "name", where), description=str(tool.get("description") or ""),
                        parameters=parameters or {}))
    return out


def tool_choice_of(choice: Any) -> str | dict[str, Any] | None:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
    raise invalid("tool_choice", 'must be "auto", "none", "required" or {"type": "function", "name": ...}')


def response_format_of(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise invalid("text", 'must be an object such as {"format": {"type": "json_schema", ...}}')
    fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise invalid("text.format.schema", "is required with json_schema: a JSON schema object")
        schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"], "strict": bool(fmt.get("strict"))}
        return {"type": "json_schema", "json_schema": schema}
    raise invalid("text.format.type", 'must be "text", "json_object" or "json_schema"')


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise invalid(f"{where}.{key}", "is required and must be a string")
    return value
