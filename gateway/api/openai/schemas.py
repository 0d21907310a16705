"""The few request fields the gateway reads itself; everything else goes to the engine untouched."""

from __future__ import annotations

import re

import msgspec

from gateway.errors import OpenAIError


class InferenceFields(msgspec.Struct):
    model: str
    stream: bool = False
    keep_alive: str | float | None = None  # LMForge/Ollama extension, removed before forwarding


_decoder = msgspec.json.Decoder(InferenceFields)
_PATH = re.compile(r"at `\$\.(\w+)")


def parse_inference(raw: bytes) -> tuple[InferenceFields, bytes]:
    """Validate the fields we need and return them with the bytes to forward."""
    if not raw.strip():
        raise OpenAIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        fields = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        match = _PATH.search(str(exc))
        raise OpenAIError(400, f"invalid request: {exc}", param=match.group(1) if match else None,
                          code="invalid_request") from None
    except msgspec.DecodeError as exc:
        raise OpenAIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not fields.model.strip():
        raise OpenAIError(400, "model must be a non-empty string", param="model", code="invalid_request")
    if fields.keep_alive is not None:
        body = msgspec.json.decode(raw)
        body.pop("keep_alive", None)
        raw = msgspec.json.encode(body)
    return fields, raw
