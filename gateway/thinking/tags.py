"""Reasoning written inline, between <think> and </think> in the answer's text, split out as reasoning events.

Engines that do not parse reasoning themselves (llama-server with
`--reasoning-format none`, servers started without a reasoning parser) send it
in the content; LMForge starts llama-server with one, so there only a template
it does not know leaves tags inline. A tag may straddle two chunks ("<th" then "ink>"), so a text tail
that could still become one is held back until the next chunk says.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from gateway.dataplane.model import Event, ReasoningDelta, TextDelta

OPEN, CLOSE = "<think>", "</think>"


class ThinkSplitter:
    """Stateful: feed it the content as it comes, then flush it once at the end."""

    def __init__(self) -> None:
        self.inside = False
        self.held = ""
        self.closed = False  # a thought just ended

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        text = self.held + text
        self.held = ""
        while text:
            tag = CLOSE if self.inside else OPEN
            at = text.find(tag)
            if at >= 0:
                self._emit(out, text[:at])
                text = text[at + len(tag):]
                self.inside = not self.inside
                self.closed = not self.inside
                continue
            keep = _partial_tail(text, tag)
            self._emit(out, text[: len(text) - keep])
            self.held = text[len(text) - keep:]
            break
        return out

    def flush(self) -> list[Event]:
        """The held tail, which never became a tag: text of whichever side the stream ended on."""
        out: list[Event] = []
        self._emit(out, self.held)
        self.held = ""
        return out

    def _emit(self, out: list[Event], text: str) -> None:
        if self.closed and not self.inside:  # the blank lines after a thought are not the answer's
            text = text.lstrip()
            self.closed = not text
        if text:
            out.append(ReasoningDelta(text) if self.inside else TextDelta(text))


def _partial_tail(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


async def split_tags(events: AsyncIterator[list[Event]]) -> AsyncIterator[list[Event]]:
    """`events` with inline thoughts turned into ReasoningDelta; reasoning the engine parsed itself passes."""
    splitter = ThinkSplitter()
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for batch in events:
            out: list[Event] = []
            for event in batch:
                if isinstance(event, TextDelta):
                    out += splitter.feed(event.text)
                    continue
                if not isinstance(event, ReasoningDelta):  # a tool call, the usage, the end: no more text to wait for
                    out += splitter.flush()
                out.append(event)
            if out:
                yield out
    if rest := splitter.flush():
        yield rest
