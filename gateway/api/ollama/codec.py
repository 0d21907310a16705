"""Ollama's request bodies read and checked (with the model they name), and /api/chat and /api/generate
translated into the internal requests.

Ollama's `options` map onto `Sampling`; an option the engine cannot take per
request (threads, GPU layers, memory mapping...) is logged and ignored, never
an error. Images, tools, `format` and `think` become their OpenAI forms.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from aiohttp import web

from gateway.dataplane.gates import find_model
from gateway.dataplane.model import ChatRequest, Message, Sampling, TextRequest, Tool, ToolCall
from gateway.dataplane.validate import OLLAMA, OLLAMA_OPTIONS, check, check_messages, read_json
from gateway.errors import ApiError
from gateway.preflight.formats import image_type
from gateway.thinking.intent import engine_fields, read_intent
from manager.protocol import ModelEntry

log = logging.getLogger("lmforge.gateway")

ROLES = frozenset({"system", "user", "assistant", "tool"})
# Ollama option -> Sampling field.
SAMPLING = {"num_predict": "max_tokens", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
            "min_p": "min_p", "typical_p": "typical_p", "repeat_penalty": "repeat_penalty",
            "repeat_last_n": "repeat_last_n", "presence_penalty": "presence_penalty",
            "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop"}
# Options llama-server reads per request under the same names; passed to it as they are.
PASSED = ("mirostat", "mirostat_tau", "mirostat_eta")
NDJSON = "application/x-ndjson"  # Ollama's streams: one JSON object a line


async def read_request(request: web.Request, *, legacy: bool = False) -> tuple[dict[str, Any], ModelEntry]:
    """The request's body, checked, and the installed model it names; 400 or 404 before any engine work."""
    body = await read_json(request)
    name = model_name(body, legacy=legacy)
    validate(body)
    return body, find_model(request, name)


def model_name(body: dict[str, Any], *, legacy: bool = False) -> str:
    """The model a request names (`name` is the older spelling some endpoints still take)."""
    name = body.get("model") or (body.get("name") if legacy else None)
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "model is required", param="model", code="invalid_request")
    return name


def validate(body: dict[str, Any]) -> None:
    """Every field's type and range, before the model is looked up or any engine work."""
    check(body, OLLAMA)
    if body.get("options") is not None:
        check(body["options"], OLLAMA_OPTIONS, "options.")
    response_format(body.get("format"))
    read_intent(body)  # think, and the thinking fields every dialect takes


def chat_request(entry: ModelEntry, body: dict[str, Any]) -> ChatRequest:
    """An /api/chat body as the internal chat request (the body was validated first)."""
    raw = body.get("messages") or []
    check_messages(raw, ROLES)
    return ChatRequest(model=entry.name, messages=messages(raw), tools=tools(body.get("tools") or []),
                       **settings(body))


def generate_chat_request(entry: ModelEntry, body: dict[str, Any]) -> ChatRequest:
    """/api/generate for a model with a chat template: `system` and `prompt` as a two-message chat."""
    turns: list[Message] = []
    if body.get("system"):
        turns.append(Message(role="system", content=body["system"]))
    turns.append(Message(role="user", content=content(body.get("prompt") or "", body.get("images"), "images")))
    return ChatRequest(model=entry.name, messages=turns, **settings(body))


def text_request(entry: ModelEntry, body: dict[str, Any]) -> TextRequest:
    """/api/generate continued as plain text: `raw`, no chat template, or a `suffix` to fill in before."""
    prompt = body.get("prompt") or ""
    if body.get("system") and not body.get("raw"):
        prompt = f"{body['system']}\n\n{prompt}"
    return TextRequest(model=entry.name, prompt=prompt, suffix=body.get("suffix") or None, **settings(body))


def settings(body: dict[str, Any]) -> dict[str, Any]:
    """The fields chat and text requests share: sampling, context, format, keep_alive, thinking."""
    sampling, num_ctx, extra = options(body.get("options") or {})
    extra.update(engine_fields(read_intent(body)))  # the switch chat templates that can think read
    return {"sampling": sampling, "num_ctx": num_ctx, "extra": extra, "keep_alive": body.get("keep_alive"),
            "response_format": response_format(body.get("format"))}


def options(given: dict[str, Any]) -> tuple[Sampling, int, dict[str, Any]]:
    """(sampling, num_ctx, engine fields) of Ollama's `options` (already checked by OLLAMA_OPTIONS)."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    num_ctx = 0
    for name, value in given.items():
        if value is None:
            continue
        if name == "num_predict":
            if value > 0:  # -1 (no limit), -2 (fill the context) and 0: the engine's own limit
                fields["max_tokens"] = int(value)
        elif name == "stop":
            fields["stop"] = [value] if isinstance(value, str) else list(value)
        elif name in SAMPLING:
            fields[SAMPLING[name]] = int(value) if name in ("top_k", "repeat_last_n", "seed") else value
        elif name == "num_ctx":
            num_ctx = int(value)
        elif name in PASSED:
            extra[name] = value
        else:
            log.info("ollama option %s=%r ignored: the engine does not take it per request", name, value)
    return Sampling(**fields), num_ctx, extra


def response_format(value: Any) -> dict[str, Any] | None:
    """Ollama's `format`: "json" or a JSON schema object, as OpenAI's response_format."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise ApiError(400, f'format must be "json" or a JSON schema object (got {value!r:.40})', param="format",
                   code="invalid_request")


def messages(raw: list[dict[str, Any]]) -> list[Message]:
    """Ollama messages as internal ones; tool results are matched to the calls they answer."""
    out: list[Message] = []
    pending: list[ToolCall] = []  # calls of the last assistant turn not yet answered
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        text = m.get("content")
        if text is not None and not isinstance(text, str):
            raise ApiError(400, f"{where}.content must be a string", param=f"{where}.content",
                           code="invalid_request")
        message = Message(role=m["role"], content=content(text or "", m.get("images"), f"{where}.images"))
        if m["role"] == "assistant":
            message.tool_calls = tool_calls(m.get("tool_calls") or [], where, len(out))
            pending = list(message.tool_calls)
            if isinstance(m.get("thinking"), str) and m["thinking"]:
                message.reasoning = m["thinking"]
        elif m["role"] == "tool":
            message.tool_call_id = answered(m, pending)
        out.append(message)
    return out


def content(text: str, images: Any, where: str) -> str | list[dict[str, Any]]:
    """Text alone, or OpenAI content parts: the text, then one image_url part per image."""
    if not images:
        return text
    if not isinstance(images, list):
        raise ApiError(400, f"{where} must be an array of base64-encoded images", param=where, code="invalid_request")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for n, image in enumerate(images):
        parts.append({"type": "image_url", "image_url": {"url": image_url(image, f"{where}[{n}]")}})
    return parts


def image_url(image: Any, where: str) -> str:
    if not isinstance(image, str) or not image:
        raise ApiError(400, f"{where} must be a base64-encoded image", param=where, code="invalid_request")
    if image.startswith("data:"):
        return image
    head = image[:64]
    try:  # the head only: a whole image is megabytes, and the preflight checks it whole
        leading = base64.b64decode(head[: len(head) // 4 * 4] or "!", validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not base64-encoded image data", param=where, code="invalid_request") from None
    return f"data:{image_type(leading) or 'image/jpeg'};base64,{image}"


def tool_calls(raw: Any, where: str, turn: int) -> list[ToolCall]:
    """Ollama's `{"function": {"name", "arguments": {...}}}` calls, with the JSON text OpenAI carries."""
    if not isinstance(raw, list):
        raise ApiError(400, f"{where}.tool_calls must be an array", param=f"{where}.tool_calls",
                       code="invalid_request")
    calls = []
    for n, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise ApiError(400, f"{where}.tool_calls[{n}].function.name is required",
                           param=f"{where}.tool_calls[{n}].function.name", code="invalid_request")
        arguments = function.get("arguments")
        text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        calls.append(ToolCall(id=call.get("id") or f"call_{turn}_{n}", name=name, arguments=text))
    return calls


def answered(message: dict[str, Any], pending: list[ToolCall]) -> str | None:
    """The id of the call a tool message answers: its own id, else the first open call of that tool."""
    if isinstance(message.get("tool_call_id"), str):
        found = next((c for c in pending if c.id == message["tool_call_id"]), None)
    else:
        name = message.get("tool_name") or message.get("name")
        found = next((c for c in pending if c.name == name), pending[0] if pending else None)
    if found is None:
        return message.get("tool_call_id")
    pending.remove(found)
    return found.id


def tools(raw: Any) -> list[Tool]:
    """Ollama's tools are OpenAI's function tools."""
    out = []
    for n, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ApiError(400, f"tools[{n}].function.name is required", param=f"tools[{n}].function.name",
                           code="invalid_request")
        parameters = function.get("parameters")
        out.append(Tool(name=function["name"], description=function.get("description") or "",
                        parameters=parameters if isinstance(parameters, dict) else {}))
    return out
