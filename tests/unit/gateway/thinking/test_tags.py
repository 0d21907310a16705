"""Inline <think> tags split into reasoning and answer, whatever the chunk boundaries."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from gateway.dataplane.model import Event, Finish, ReasoningDelta, TextDelta, Usage
from gateway.thinking.tags import ThinkSplitter, split_tags


def split(chunks: list[str]) -> tuple[str, str]:
    splitter = ThinkSplitter()
    events = [e for chunk in chunks for e in splitter.feed(chunk)] + splitter.flush()
    return ("".join(e.text for e in events if isinstance(e, ReasoningDelta)),
            "".join(e.text for e in events if isinstance(e, TextDelta)))


@pytest.mark.parametrize("cut", range(1, len("<think>why</think>\n\nbecause")))
def test_tags_split_at_any_chunk_boundary(cut: int) -> None:
    text = "<think>why</think>\n\nbecause"
    assert split([text[:cut], text[cut:]]) == ("why", "because")


def test_one_character_at_a_time_and_several_thoughts() -> None:
    assert split(list("a<think>b</think>c<think>d</think>e")) == ("bd", "ace")


def test_an_unterminated_thought_is_reasoning_and_a_tail_that_never_became_a_tag_is_text() -> None:
    assert split(["<think>still going"]) == ("still going", "")
    assert split(["a <thi"]) == ("", "a <thi")
    assert split(["1 < 2 and <b>"]) == ("", "1 < 2 and <b>")


def test_reasoning_the_engine_parsed_passes_as_it_is() -> None:
    async def events() -> AsyncIterator[list[Event]]:
        yield [ReasoningDelta("parsed")]
        yield [TextDelta("the answer")]
        yield [Usage(completion_tokens=2), Finish("stop")]

    async def run() -> list[Event]:
        return [e async for batch in split_tags(events()) for e in batch]

    got = asyncio.run(run())
    assert got[:2] == [ReasoningDelta("parsed"), TextDelta("the answer")] and isinstance(got[-1], Finish)


def test_held_text_comes_out_before_the_end() -> None:
    async def events() -> AsyncIterator[list[Event]]:
        yield [TextDelta("x <th")]
        yield [Finish("stop")]

    async def run() -> list[Event]:
        return [e async for batch in split_tags(events()) for e in batch]

    assert asyncio.run(run()) == [TextDelta("x "), TextDelta("<th"), Finish("stop")]
