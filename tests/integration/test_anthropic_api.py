"""Anthropic's /v1/messages and count_tokens with the official `anthropic` client, on real engines.

The cycle model answers " hello world" forever, so text, token counts and stop
reasons are exact; the random chat model serves only where its words do not matter.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Iterator

import aiohttp
import anthropic
import pytest

from tests.support.instance import Instance, running_instance

CYCLE = "owner/tiny:cycle"
HI = [{"role": "user", "content": "hi"}]
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOL = {"name": "get_time", "description": "The time now", "input_schema": {"type": "object", "properties": {}}}


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    """One LMForge for the module (its tests only read); the engine-killing test runs last."""
    models = {CYCLE: models_dir / "cycle.gguf", "tiny:chat": models_dir / "chat.gguf",
              "tiny:embed": models_dir / "embed.gguf"}
    with running_instance(tmp_path_factory.mktemp("anthropic") / "home", llama_server, models) as inst:
        yield inst


@pytest.fixture(scope="module")
def client(inst: Instance) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=inst.url, api_key="unused", max_retries=0)


def test_a_whole_message_has_exact_text_stop_reason_and_usage(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=CYCLE, max_tokens=4, system="be brief", messages=HI, metadata={"user_id": "u"})
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant" and msg.model == CYCLE
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == " hello world hello world"
    assert msg.stop_reason == "max_tokens" and msg.stop_sequence is None
    assert msg.usage.output_tokens == 4 and msg.usage.input_tokens > 0


def test_a_stop_sequence_is_named_as_the_reason(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=CYCLE, max_tokens=40, stop_sequences=["never", "world"], messages=HI)
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "world"
    assert msg.content[0].text.startswith(" hello") and "world" not in msg.content[0].text


async def test_the_stream_sends_anthropics_typed_events_in_order(inst: Instance) -> None:
    body = {"model": CYCLE, "max_tokens": 4, "stream": True, "messages": HI}
    async with aiohttp.ClientSession() as http:
        async with http.post(inst.url + "/v1/messages", json=body) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            frames = (await resp.read()).decode().strip().split("\n\n")
    events = []
    for frame in frames:
        head, data = frame.split("\n")
        events.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    assert all(name == data["type"] for name, data in events)  # the SSE event name is the payload's type
    assert [name for name, _ in events] == ["message_start", "ping", "content_block_start", *["content_block_delta"] * 4,
                                            "content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["model"] == CYCLE
    assert events[2][1]["content_block"] == {"type": "text", "text": ""}
    assert "".join(d["delta"]["text"] for _, d in events[3:7]) == " hello world hello world"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 4 and delta["usage"]["input_tokens"] > 0


def test_the_clients_stream_helper_builds_the_whole_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=CYCLE, max_tokens=6, messages=HI, stop_sequences=["world"]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == final.content[0].text and final.content[0].text.startswith(" hello")
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "world"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens >= 1
    raw = list(client.messages.create(model=CYCLE, max_tokens=2, messages=HI, stream=True))
    assert [e.type for e in raw] == ["message_start", "content_block_start", "content_block_delta",
                                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]


def test_count_tokens_matches_what_generation_reports(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=CYCLE, system="be brief", messages=HI)
    used = client.messages.create(model=CYCLE, max_tokens=1, system="be brief", messages=HI).usage
    assert counted.input_tokens > 0 and counted.input_tokens == used.input_tokens


def test_tool_use_and_tool_result_turns_reach_the_prompt(client: anthropic.Anthropic) -> None:
    def conversation(result: str) -> list[dict]:
        return [
            {"role": "user", "content": [{"type": "text", "text": "what time is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": [{"type": "text", "text": result}]}]},
        ]

    short = client.messages.count_tokens(model=CYCLE, tools=[TOOL], messages=conversation("noon"))
    long = client.messages.count_tokens(model=CYCLE, tools=[TOOL], messages=conversation("noon " * 20))
    assert long.input_tokens > short.input_tokens  # the tool's answer is in the prompt the engine reads
    msg = client.messages.create(model=CYCLE, max_tokens=2, tools=[TOOL], tool_choice={"type": "auto"},
                                 messages=conversation("noon"))
    assert msg.stop_reason == "max_tokens" and msg.usage.input_tokens == short.input_tokens


def test_errors_come_in_anthropics_envelope(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=4, messages=HI)
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in missing.value.body["error"]["message"]
    cases = [
        ({"max_tokens": anthropic.omit}, "max_tokens is required"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 4, "extra_body": {"temperature": "hot"}}, "temperature"),
        ({"max_tokens": 4, "extra_body": {"top_k": -1}}, "top_k"),
        ({"max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
         "messages[0].content[0].type"),
    ]
    for fields, named in cases:
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.create(**{"model": CYCLE, "messages": HI, "timeout": 30, **fields})
        assert bad.value.body["error"]["type"] == "invalid_request_error" and named in bad.value.body["error"]["message"]
    # Server tools (an agent may send them with every request) are left out, not refused.
    msg = client.messages.create(model=CYCLE, max_tokens=2, messages=HI,
                                 tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert msg.stop_reason == "max_tokens"


def test_structured_output_follows_the_schema(client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    msg = client.messages.create(model="tiny:chat", max_tokens=256, messages=HI,
                                 output_config={"format": {"type": "json_schema", "schema": schema}})
    assert msg.stop_reason == "end_turn" and list(json.loads(msg.content[0].text)) == ["ok"]


def test_an_image_for_a_text_model_and_chat_on_an_embedder_are_refused(client: anthropic.Anthropic) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=CYCLE, max_tokens=4,
                               messages=[{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}])
    assert "cannot read images" in bad.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="tiny:embed", max_tokens=4, messages=HI)
    assert "does not support chat" in bad.value.body["error"]["message"]


def test_an_engine_dying_mid_stream_ends_it_with_an_error_event(inst: Instance, client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=CYCLE, max_tokens=100000, messages=HI) as stream:
        with pytest.raises(anthropic.APIStatusError) as broke:
            for i, _ in enumerate(stream.text_stream):
                if i == 2:
                    os.kill(inst.slot(CYCLE)["pid"], signal.SIGKILL)
    assert broke.value.body["type"] == "error" and broke.value.body["error"]["type"] == "api_error"
    assert "failed mid-stream" in broke.value.body["error"]["message"]


def test_keep_alive_reaches_the_lease_for_messages_and_count_tokens(inst: Instance) -> None:
    body = {"model": CYCLE, "max_tokens": 1, "messages": HI, "keep_alive": "1h"}
    assert inst.post("/v1/messages", body)[0] == 200
    assert inst.slot(CYCLE)["expires_in_s"] > 3000  # the instance's default is minutes
    assert inst.post("/v1/messages/count_tokens", {**body, "keep_alive": "2h"})[0] == 200
    assert inst.slot(CYCLE)["expires_in_s"] > 6000
