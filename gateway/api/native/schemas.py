"""Bodies of the native /lf endpoints."""

from __future__ import annotations

from typing import Annotated

import msgspec

from gateway.errors import OpenAIError
from manager.protocol import SlotKind


class SwitchBody(msgspec.Struct):
    model: str
    pin: bool = False
    keep_alive: str | float | None = None
    kind: SlotKind = SlotKind.CHAT
    # Tokens of context to load with (at least; capped by the model's trained context); 0: the default.
    num_ctx: Annotated[int, msgspec.Meta(ge=0)] = 0


class UnloadBody(msgspec.Struct):
    model: str | None = None  # None: every loaded model
    kind: SlotKind | None = None


class ImportBody(msgspec.Struct):
    path: str  # a GGUF file on the gateway's machine, absolute
    name: str
    mmproj: str = ""  # its vision projector, absolute; "" for none


def parse_body(raw: bytes, cls: type, *, empty_ok: bool = False):  # type: ignore[no-untyped-def]
    if not raw.strip():
        if empty_ok:
            return cls()
        raise OpenAIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return msgspec.json.decode(raw, type=cls)
    except msgspec.ValidationError as exc:
        raise OpenAIError(400, f"invalid request: {exc}", code="invalid_request") from None
    except msgspec.DecodeError as exc:
        raise OpenAIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
