"""The official `anthropic` client against LMForge's /v1/messages, as Claude Code and SDK apps call it."""

from __future__ import annotations

import anthropic
import pytest

from tests.clients.served import CYCLE, CYCLE_TEXT, cycle_text

USER = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]


@pytest.fixture(scope="module")
def client(lmforge) -> anthropic.Anthropic:  # type: ignore[no-untyped-def]
    # The SDK appends /v1/messages itself; the key is sent but LMForge trusts loopback.
    return anthropic.Anthropic(base_url=lmforge.url, api_key="lmforge", max_retries=0)


def test_message_stops_at_max_tokens(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(model=CYCLE, max_tokens=4, system="be brief", messages=USER)
    assert reply.type == "message" and reply.role == "assistant" and reply.model == CYCLE
    assert [block.type for block in reply.content] == ["text"]
    assert reply.content[0].text == cycle_text(4)
    assert reply.stop_reason == "max_tokens" and reply.stop_sequence is None
    assert reply.usage.output_tokens == 4 and reply.usage.input_tokens > 0


def test_stop_sequence_is_reported(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(model=CYCLE, max_tokens=16, messages=USER, stop_sequences=[" world"])
    assert reply.content[0].text == " hello"
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == " world"


def test_system_as_blocks_and_a_multi_turn_conversation(client: anthropic.Anthropic) -> None:
    turns = [*USER, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "again"}]
    reply = client.messages.create(model=CYCLE, max_tokens=2, messages=turns,
                                   system=[{"type": "text", "text": "be brief"}])
    assert reply.content[0].text == CYCLE_TEXT


def test_stream_has_the_typed_events(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=CYCLE, max_tokens=6, messages=USER) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    for kind in ("content_block_start", "content_block_stop", "message_delta"):
        assert kinds.count(kind) == 1, kinds
    assert kinds.count("content_block_delta") >= 1
    assert final.content[0].text == cycle_text(6)
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 6


def test_count_tokens_matches_the_input_usage(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=CYCLE, system="be brief", messages=USER)
    assert counted.input_tokens > 0
    used = client.messages.create(model=CYCLE, max_tokens=1, system="be brief", messages=USER)
    assert counted.input_tokens == used.usage.input_tokens


def test_unknown_model_is_not_found_in_anthropics_envelope(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="no-such:model", max_tokens=4, messages=USER)
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "not_found_error"


def test_bad_max_tokens_is_invalid_request(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model=CYCLE, max_tokens=-5, messages=USER)
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in err.value.body["error"]["message"]
