"""Request bodies: the one JSON decoder every route parses them with (nesting capped), and the type and
range checks of the fields every dialect shares, before any engine work.

A bad value is a 400 naming the field (`options.num_predict`, `messages[2].role`),
raised as ApiError and rendered in the route's own dialect. Fields not listed
here are the engine's business and pass through.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, TypeVar

import msgspec
from aiohttp import web

from gateway.errors import ApiError
from manager.keepalive import KeepAliveError, parse_keep_alive

T = TypeVar("T")


class Rule(NamedTuple):
    # "int", "num", "bool", "str", "strs" (a string or a list of strings), "list", "obj",
    # "duration" (Ollama's keep_alive: a string or a number of seconds)
    kind: str
    lo: float | None = None
    hi: float | None = None


INT_MAX = 2**63 - 1

# OpenAI's chat and completions, and /v1/responses.
OPENAI = {
    "model": Rule("str"), "stream": Rule("bool"), "max_tokens": Rule("int", 1, INT_MAX),
    "max_completion_tokens": Rule("int", 1, INT_MAX), "max_output_tokens": Rule("int", 1, INT_MAX),
    "temperature": Rule("num", 0, 2), "top_p": Rule("num", 0, 1), "top_k": Rule("int", 0, INT_MAX),
    "min_p": Rule("num", 0, 1), "n": Rule("int", 1, 16), "seed": Rule("int", -INT_MAX, INT_MAX),
    "presence_penalty": Rule("num", -2, 2), "frequency_penalty": Rule("num", -2, 2),
    "repeat_penalty": Rule("num", 0, 10), "logprobs": Rule("bool"), "top_logprobs": Rule("int", 0, 20),
    "stop": Rule("strs"), "messages": Rule("list"), "tools": Rule("list"), "response_format": Rule("obj"),
    "stream_options": Rule("obj"), "keep_alive": Rule("duration"),
}
# OpenAI's legacy completions: `logprobs` there is how many alternatives to return per token.
COMPLETIONS = {**OPENAI, "logprobs": Rule("int", 0, 5)}
# OpenAI's /v1/responses: `text` holds the output format.
RESPONSES = {**OPENAI, "text": Rule("obj"), "instructions": Rule("str"), "parallel_tool_calls": Rule("bool")}

# Anthropic's /v1/messages.
ANTHROPIC = {
    "model": Rule("str"), "stream": Rule("bool"), "max_tokens": Rule("int", 1, INT_MAX),
    "temperature": Rule("num", 0, 1), "top_p": Rule("num", 0, 1), "top_k": Rule("int", 0, INT_MAX),
    "stop_sequences": Rule("strs"), "messages": Rule("list"), "tools": Rule("list"),
    "metadata": Rule("obj"), "tool_choice": Rule("obj"), "thinking": Rule("obj"), "output_config": Rule("obj"),
    "keep_alive": Rule("duration"),
}

# Ollama's request fields and `options` (https://github.com/ollama/ollama/blob/main/docs/api.md).
OLLAMA = {"model": Rule("str"), "stream": Rule("bool"), "messages": Rule("list"), "tools": Rule("list"),
          "options": Rule("obj"), "prompt": Rule("str"), "system": Rule("str"), "suffix": Rule("str"),
          "raw": Rule("bool"), "images": Rule("list"), "template": Rule("str"), "context": Rule("list"),
          "truncate": Rule("bool"), "keep_alive": Rule("duration")}
OLLAMA_OPTIONS = {
    "num_predict": Rule("int", -2, INT_MAX), "num_ctx": Rule("int", 1, 2**24), "temperature": Rule("num", 0, 100),
    "top_k": Rule("int", 0, INT_MAX), "top_p": Rule("num", 0, 1), "min_p": Rule("num", 0, 1),
    "typical_p": Rule("num", 0, 1), "repeat_penalty": Rule("num", 0, 100), "repeat_last_n": Rule("int", -1, INT_MAX),
    "presence_penalty": Rule("num", -100, 100), "frequency_penalty": Rule("num", -100, 100),
    "seed": Rule("int", -INT_MAX, INT_MAX), "stop": Rule("strs"), "num_keep": Rule("int", -1, INT_MAX),
    "num_batch": Rule("int", 1, INT_MAX), "num_gpu": Rule("int", -1, INT_MAX), "num_thread": Rule("int", 0, 4096),
    "mirostat": Rule("int", 0, 2), "mirostat_tau": Rule("num", 0, 100), "mirostat_eta": Rule("num", 0, 100),
}


def check(body: Any, rules: dict[str, Rule], prefix: str = "") -> None:
    """Raise a 400 naming the first field of `body` that breaks its rule."""
    if not isinstance(body, dict):
        raise ApiError(400, f"{prefix.rstrip('.') or 'the request body'} must be a JSON object",
                       param=prefix.rstrip(".") or None, code="invalid_request")
    for name, rule in rules.items():
        value = body.get(name)
        if value is not None:
            problem = _problem(value, rule)
            if problem:
                raise invalid(f"{prefix}{name}", f"{problem} (got {_show(value)})")


def invalid(where: str, message: str) -> ApiError:
    """The 400 for a bad field: `where` names it (`messages[2].role`), `message` says what it must be."""
    return ApiError(400, f"{where} {message}", param=where, code="invalid_request")


def require(body: dict[str, Any], *names: str) -> None:
    for name in names:
        value = body.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise invalid(name, "is required")


def check_messages(messages: list[Any], roles: frozenset[str]) -> None:
    """Each message an object with a known role and text, a list of typed parts, or nothing as content."""
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, "must be an object with role and content")
        role = message.get("role")
        if not isinstance(role, str) or role not in roles:
            raise invalid(f"{where}.role", f"must be one of {', '.join(sorted(roles))} (got {_show(role)})")
        for key in ("name", "tool_call_id"):
            if message.get(key) is not None and not isinstance(message[key], str):
                raise invalid(f"{where}.{key}", "must be a string")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid(f"{where}.content", "must be a string or a list of content parts")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid(f"{where}.content[{j}]", "must be a content part object with a string type")


def check_function_tools(tools: list[Any]) -> None:
    """OpenAI's tools: each {"type": "function", "function": {"name": ..., "parameters": {...}}}."""
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise invalid(f"{where}.type", 'must be "function": each tool is {"type": "function", "function": {...}}')
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid(f"{where}.function.name", "must be a string")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            raise invalid(f"{where}.function.parameters", "must be a JSON schema object")


def _problem(value: Any, rule: Rule) -> str | None:
    kind = rule.kind
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "str":
        return None if isinstance(value, str) else "must be a string"
    if kind == "list":
        return None if isinstance(value, list) else "must be an array"
    if kind == "obj":
        return None if isinstance(value, dict) else "must be an object"
    if kind == "duration":  # checked as the manager will read it, so a bad one is this route's 400
        try:
            parse_keep_alive(value)
        except KeepAliveError:
            return ('must be a duration such as "30s", "5m" or "1h30m", a number of seconds, 0 to unload after '
                    "the request, or -1 to keep loaded")
        return None
    if kind == "strs":
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        return None if ok else "must be a string or an array of strings"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int" and not (number and float(value).is_integer()):
        return "must be an integer"
    if kind == "num" and not (number and math.isfinite(value)):
        return "must be a number"
    if (rule.lo is not None and value < rule.lo) or (rule.hi is not None and value > rule.hi):
        if rule.hi is None or rule.hi >= INT_MAX:
            return f"must be at least {rule.lo:g}"
        return f"must be between {rule.lo:g} and {rule.hi:g}"
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_decode_any = msgspec.json.Decoder().decode

# How deeply a request body may nest arrays and objects. Real requests, tool and response schemas
# included, stay far below; uncapped, a decoder recurses into RecursionError (a 500).
MAX_DEPTH = 64


def decode_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is empty, not JSON, too deep, or not an object.

    Every request body the gateway parses goes through here."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        body = _decode_any(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # nested deeper than the interpreter's recursion limit, far past MAX_DEPTH
        raise _too_deep() from None
    # Counting brackets is cheap; only a body with more of them than the cap can nest deeper.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and nests_deeper(body, MAX_DEPTH):
        raise _too_deep()
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether decoded JSON nests arrays and objects more than `limit` deep; level by level, not recursing."""
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(limit):
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
    return bool(level)


def _too_deep() -> ApiError:
    return ApiError(400, f"the request body nests arrays and objects more than {MAX_DEPTH} deep",
                    code="invalid_json")


def decode_as(raw: bytes, cls: type[T]) -> T:
    """The request body as `cls` (a msgspec Struct), through decode_object; 400 naming a wrong field."""
    try:
        return msgspec.convert(decode_object(raw), cls)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request: {exc}", code="invalid_request") from None


async def read_json(request: web.Request) -> dict[str, Any]:
    return decode_object(await request.read())
