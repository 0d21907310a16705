"""What the /v1 byte relay checks and changes in a body before the engine sees it.

The body is parsed once to check the shared fields (gateway/dataplane/validate.py)
and the model; the bytes go to the engine untouched unless an LMForge-only field
(`keep_alive`) must come out or a field needs the engine's spelling.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.dataplane.validate import (COMPLETIONS, OPENAI, check, check_function_tools, check_messages,
                                       decode_object, require)

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class Relay(msgspec.Struct, kw_only=True):
    model: str
    stream: bool
    keep_alive: str | float | None
    body: dict[str, Any]  # the parsed body, for the gates
    raw: bytes  # what goes to the engine


def relay_body(raw: bytes, *, chat: bool) -> Relay:
    """Validate a chat or completions body and return the bytes to forward."""
    body = decode_object(raw)
    check(body, OPENAI if chat else COMPLETIONS)
    require(body, "model")
    if chat:
        require(body, "messages")
        check_messages(body["messages"], CHAT_ROLES)
        check_function_tools(body.get("tools") or [])
    elif "prompt" not in body:
        require(body, "prompt")
    keep_alive = body.get("keep_alive")
    changed = "keep_alive" in body
    body.pop("keep_alive", None)
    if chat and any(isinstance(m, dict) and m.get("role") == "developer" for m in body["messages"]):
        # OpenAI's newer name for the system role; chat templates only know "system".
        body["messages"] = [{**m, "role": "system"} if m.get("role") == "developer" else m
                            for m in body["messages"]]
        changed = True
    return Relay(model=body["model"], stream=body.get("stream") is True, keep_alive=keep_alive, body=body,
                 raw=msgspec.json.encode(body) if changed else raw)
