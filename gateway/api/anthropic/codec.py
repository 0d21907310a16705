"""Anthropic Messages requests in the internal model: content blocks, tools and thinking as OpenAI's.

Anthropic keeps the system prompt at the top level, tool calls as `tool_use`
blocks in assistant turns and their results as `tool_result` blocks in the
next user turn; the engine wants a system message, `tool_calls` and `tool`
role messages placed right after the call. A block LMForge cannot serve is a
400 naming it (`messages[2].content[0].type`), never silently dropped.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gateway.dataplane.model import ChatRequest, Message, Sampling, Tool, ToolCall, flatten
from gateway.dataplane.validate import ANTHROPIC, check, check_messages, invalid, require
from gateway.thinking.intent import Intent, engine_fields, read_intent

log = logging.getLogger("lmforge.gateway")

ROLES = frozenset({"user", "assistant"})
TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
# Blocks of Anthropic's own server features (files, citations sources, server tools): nothing to map them to.
UNSERVED = "LMForge serves text, image, tool_use, tool_result and thinking blocks"


def check_request(body: dict[str, Any], *required: str) -> None:
    """Types and ranges of the shared fields, the required ones, and user/assistant roles only."""
    check(body, ANTHROPIC)
    require(body, "model", *required, "messages")
    check_messages(body["messages"], ROLES)
    for i, message in enumerate(body["messages"]):
        if message.get("content") is None:
            raise invalid(f"messages[{i}].content", "is required: a string or a list of content blocks")


def to_chat(body: dict[str, Any], model: str) -> ChatRequest:
    """The internal request for a checked /v1/messages (or count_tokens) body; `model` is the canonical name."""
    system = system_text(body.get("system"))
    messages = [Message(role="system", content=system)] if system else []
    for i, message in enumerate(body["messages"]):
        turn = assistant_turn if message["role"] == "assistant" else user_turn
        messages += turn(message["content"], f"messages[{i}].content")
    stop = body.get("stop_sequences")
    sampling = Sampling(max_tokens=body.get("max_tokens"), temperature=body.get("temperature"),
                        top_p=body.get("top_p"), top_k=body.get("top_k"),
                        stop=[stop] if isinstance(stop, str) else stop or None)
    extra = engine_fields(intent_of(body))
    choice, parallel = tool_choice_of(body.get("tool_choice"))
    if parallel is False:
        extra["parallel_tool_calls"] = False
    return ChatRequest(model=model, messages=messages, sampling=sampling, tools=tools_of(body.get("tools")),
                       tool_choice=choice, response_format=response_format_of(body),
                       keep_alive=body.get("keep_alive"), extra=extra)


def system_text(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise invalid("system", "must be a string or a list of text blocks")
    return "\n".join(text_of(block, f"system[{i}]") for i, block in enumerate(system))


def text_of(block: Any, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise invalid(where, 'must be a text block: {"type": "text", "text": "..."}')
    return block["text"]


def blocks(content: str | list[Any], where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise invalid(f"{where}[{j}]", "must be a content block object with a type")
    return content


def user_turn(content: str | list[Any], where: str) -> list[Message]:
    """Tool results first (as `tool` messages, right after the assistant's calls), then the user's own parts."""
    tools: list[Message] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks(content, where)):
        at, kind = f"{where}[{j}]", block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": text_of(block, at)})
        elif kind == "image":
            parts.append(image_part(block, at))
        elif kind == "tool_result":
            text, images = tool_result(block, at)
            tools.append(Message(role="tool", content=text, tool_call_id=block["tool_use_id"]))
            parts += images
        else:
            raise invalid(f"{at}.type", f"{kind!r} is not supported in a user turn; {UNSERVED}")
    if not parts:
        return tools
    return [*tools, Message(role="user", content=flatten(parts))]


def assistant_turn(content: str | list[Any], where: str) -> list[Message]:
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(blocks(content, where)):
        at, kind = f"{where}[{j}]", block["type"]
        if kind == "text":
            text.append(text_of(block, at))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking") or ""))
        elif kind == "redacted_thinking":
            continue  # encrypted by Anthropic: nothing a local model can read
        elif kind == "tool_use":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("id"), str):
                raise invalid(at, "a tool_use block needs a string id and name")
            arguments = block.get("input") if block.get("input") is not None else {}
            if not isinstance(arguments, dict):
                raise invalid(f"{at}.input", "must be an object")
            calls.append(ToolCall(id=block["id"], name=block["name"], arguments=json.dumps(arguments)))
        else:
            raise invalid(f"{at}.type", f"{kind!r} is not supported in an assistant turn; {UNSERVED}")
    return [Message(role="assistant", content="".join(text), tool_calls=calls,
                    reasoning="".join(reasoning) or None)]


def tool_result(block: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """A tool_result's text for the `tool` message, and its images (which a tool message cannot carry)."""
    if not isinstance(block.get("tool_use_id"), str):
        raise invalid(f"{where}.tool_use_id", "is required: the id of the tool_use this answers")
    content = block.get("content")
    text: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        text.append(content)
    elif isinstance(content, list):
        for k, part in enumerate(blocks(content, f"{where}.content")):
            at = f"{where}.content[{k}]"
            if part["type"] == "image":
                images.append(image_part(part, at))
            else:
                text.append(text_of(part, at))
    elif content is not None:
        raise invalid(f"{where}.content", "must be a string or a list of text and image blocks")
    result = "\n".join(text)
    # Templates have no place for Anthropic's error flag: the model reads it in the text.
    return (f"Error: {result}" if block.get("is_error") else result), images


def image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise invalid(f"{where}.source", "is required: {\"type\": \"base64\", \"media_type\", \"data\"} or a url")
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") or "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source['data']}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise invalid(f"{where}.source.type", f"{source.get('type')!r} is not supported: send base64 data or a url")


def tools_of(tools: list[Any] | None) -> list[Tool]:
    out = []
    for i, tool in enumerate(tools or ()):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid(where, "must be an object with name and input_schema")
        if tool.get("type") not in (None, "custom"):
            # Anthropic's server tools (web search, code execution) have nothing to run them here;
            # an agent may send them with every request, so they are left out, not refused.
            log.info("ignoring %s of type %r: LMForge runs custom tools only", where, tool["type"])
            continue
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise invalid(f"{where}.name", "is required")
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise invalid(f"{where}.input_schema", "must be a JSON schema object")
        out.append(Tool(name=tool["name"], description=str(tool.get("description") or ""),
                        parameters=schema or {}))
    return out


def tool_choice_of(choice: Any) -> tuple[str | dict[str, Any] | None, bool | None]:
    """OpenAI's tool_choice, and whether parallel calls are allowed (None: the engine's default)."""
    if choice is None:
        return None, None
    if not isinstance(choice, dict) or choice.get("type") not in (*TOOL_CHOICE, "tool"):
        raise invalid("tool_choice", 'must be {"type": "auto" | "any" | "tool" | "none"}')
    parallel = False if choice.get("disable_parallel_tool_use") else None
    if choice["type"] != "tool":
        return TOOL_CHOICE[choice["type"]], parallel
    if not isinstance(choice.get("name"), str):
        raise invalid("tool_choice.name", 'is required with {"type": "tool"}')
    return {"type": "function", "function": {"name": choice["name"]}}, parallel


def response_format_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """Structured output: `output_config.format` (or the beta's top-level `output_format`) as a JSON schema."""
    config = body.get("output_config")
    where, fmt = ("output_config.format", config.get("format")) if isinstance(config, dict) else ("", None)
    if fmt is None and body.get("output_format") is not None:
        where, fmt = "output_format", body["output_format"]
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise invalid(where, 'must be {"type": "json_schema", "schema": {...}}')
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def intent_of(body: dict[str, Any]) -> Intent:
    """The request's thinking (gateway/thinking/intent.py): Anthropic's models think only when asked, and so must
    a template that thinks by default. Anthropic's rule holds: the budget stays below max_tokens."""
    intent = read_intent(body)
    if intent.on is None:
        intent.on = False
    budget, cap = intent.budget, body.get("max_tokens")
    if intent.on and budget is not None and isinstance(cap, int) and budget >= cap:
        named = "thinking_budget" if "thinking_budget" in {**body, **(body.get("extra_body") or {})} else (
            "thinking.budget_tokens")
        raise invalid(named, f"must be less than max_tokens ({budget} >= {cap}): max_tokens covers the thinking "
                      "and the answer")
    return intent
