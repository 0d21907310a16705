"""Bodies of the native /lf endpoints; a model name in one is checked as it is decoded."""

from __future__ import annotations

from typing import Annotated

import msgspec

from gateway.dataplane.gates import valid_name
from gateway.dataplane.validate import decode_as
from manager.protocol import SlotKind


class SwitchBody(msgspec.Struct):
    model: str
    pin: bool = False
    keep_alive: str | float | None = None
    kind: SlotKind = SlotKind.CHAT
    # Tokens of context to load with (at least; capped by the model's trained context); 0: the default.
    num_ctx: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        valid_name(self.model)


class UnloadBody(msgspec.Struct):
    model: str | None = None  # None: every loaded model
    kind: SlotKind | None = None

    def __post_init__(self) -> None:
        if self.model is not None:
            valid_name(self.model)


class ImportBody(msgspec.Struct):
    path: str  # a GGUF file on the gateway's machine, absolute
    name: str
    mmproj: str = ""  # its vision projector, absolute; "" for none

    def __post_init__(self) -> None:
        valid_name(self.name, "name")


class PullBody(msgspec.Struct):
    model: str  # a catalog shortcut, owner/repo[:quant] or hf.co/owner/repo[:quant]
    keep: bool = False  # go on when the caller leaves (by default, the last caller to leave cancels it)

    def __post_init__(self) -> None:
        valid_name(self.model)


def parse_body(raw: bytes, cls: type, *, empty_ok: bool = False):  # type: ignore[no-untyped-def]
    if not raw.strip() and empty_ok:
        return cls()
    return decode_as(raw, cls)
