"""Reasoning written inline, between <think> and </think> in the answer's text, split out as reasoning events.

Engines that do not parse reasoning themselves (llama-server with
`--reasoning-format none`, most OpenAI-compatible servers) send it in the
content. A tag may straddle two chunks ("<th" then "ink>"), so a text tail
that could still become one is held back until the next chunk says.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from gateway.dataplane.model import Event, ReasoningDelta, TextDelta

OPEN, CLOSE = "<think>", "</think>"


class ThinkSplitter:
    """Stateful: feed it the content as it comes, then flush it once at the end.

    `inside` starts the text inside a thought: a template that opens the thought
    itself (`<think>\\n` at the end of the prompt) gets a reply with no opening tag.
    """

    def __init__(self, *, inside: bool = False) -> None:
        self.inside = inside
        self.held = ""
        self.fed = False
        self.closed = False  # a thought just ended
        self.opening = inside  # started inside: an opening tag the model writes anyway is still only a tag

    def engine_parses(self) -> None:
        """The engine sent reasoning of its own before any text: what text follows is the answer."""
        if not self.fed:
            self.inside = False

    def feed(self, text: str) -> list[Event]:
        self.fed = True
        out: list[Event] = []
        text = self.held + text
        self.held = ""
        if self.opening:
            head = text.lstrip()
            if len(head) < len(OPEN) and OPEN.startswith(head):
                self.held = text  # whitespace, or the start of a tag
                return out
            self.opening = False
            if head.startswith(OPEN):
                text = head[len(OPEN):]
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


async def split_tags(events: AsyncIterator[list[Event]], *, inside: bool = False) -> AsyncIterator[list[Event]]:
    """`events` with inline thoughts turned into ReasoningDelta; reasoning the engine parsed itself passes."""
    splitter = ThinkSplitter(inside=inside)
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for batch in events:
            out: list[Event] = []
            for event in batch:
                if isinstance(event, TextDelta):
                    out += splitter.feed(event.text)
                    continue
                if isinstance(event, ReasoningDelta):
                    splitter.engine_parses()
                else:  # a tool call, the usage, the end: no more text to wait for
                    out += splitter.flush()
                out.append(event)
            if out:
                yield out
    if rest := splitter.flush():
        yield rest
