"""OpenAI's /v1/responses (stateless) with the official `openai` client, on real engines.

The cycle model answers " hello world" forever, so text, token counts and statuses
are exact; the random chat model serves only under a JSON schema, where its words do not matter.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Iterator

import openai
import pytest

from tests.support.instance import Instance, running_instance

CYCLE = "owner/tiny:cycle"
TOOL = {"type": "function", "name": "get_time", "description": "The time now",
        "parameters": {"type": "object", "properties": {}}}
# A schema whose every answer is a few tokens long, so even the random model finishes well within 256.
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
SCHEMA_FORMAT = {"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    """One LMForge for the module (its tests only read); the engine-killing test runs last."""
    models = {CYCLE: models_dir / "cycle.gguf", "tiny:chat": models_dir / "chat.gguf"}
    with running_instance(tmp_path_factory.mktemp("responses") / "home", llama_server, models) as inst:
        yield inst


@pytest.fixture(scope="module")
def client(inst: Instance) -> openai.OpenAI:
    return openai.OpenAI(base_url=inst.url + "/v1", api_key="unused", max_retries=0)


def test_a_whole_response_cut_by_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=CYCLE, input="hi", instructions="be brief", max_output_tokens=4)
    assert reply.id.startswith("resp_") and reply.object == "response" and reply.model == CYCLE
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in reply.output] == ["message"]
    assert reply.output[0].role == "assistant" and reply.output[0].content[0].type == "output_text"
    assert reply.output_text == " hello world hello world" and reply.instructions == "be brief"
    usage = reply.usage
    assert usage.output_tokens == 4 and usage.input_tokens > 0 and usage.total_tokens == usage.input_tokens + 4


def test_the_stream_sends_typed_events_numbered_in_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=CYCLE, input="hi", max_output_tokens=4, stream=True))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * 4, "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == " hello world hello world"
    item_id = events[2].item.id
    assert all(e.item_id == item_id for e in events[3:10])
    final = events[-1].response
    assert final.status == "incomplete" and final.output_text == " hello world hello world"
    assert final.usage.output_tokens == 4 and final.id == events[0].response.id


def test_the_clients_stream_helper_builds_the_final_response(client: openai.OpenAI) -> None:
    # The helper finishes only on response.completed: the schema makes the random model end by itself.
    with client.responses.stream(model="tiny:chat", input=[{"role": "user", "content": "hi"}],
                                 max_output_tokens=256, text=SCHEMA_FORMAT) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and "".join(deltas) == final.output_text
    assert list(json.loads(final.output_text)) == ["ok"]


def test_a_function_call_round_trip_reaches_the_prompt_as_chat_would(inst: Instance, client: openai.OpenAI) -> None:
    """The items translate to the messages a chat client would send: the engine counts the same prompt."""
    items = [
        {"role": "developer", "content": "answer briefly"},
        {"role": "user", "content": [{"type": "input_text", "text": "what time is it?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "noon"},
    ]
    reply = client.responses.create(model=CYCLE, input=items, tools=[TOOL], tool_choice="auto", max_output_tokens=2)
    assert reply.status == "incomplete" and reply.tools[0].name == "get_time"
    messages = [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "what time is it?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
    ]
    code, chat = inst.post("/v1/chat/completions", {"model": CYCLE, "messages": messages, "max_tokens": 2,
                                                    "tools": [{"type": "function", "function": {
                                                        k: TOOL[k] for k in ("name", "description", "parameters")}}]})
    assert code == 200 and reply.usage.input_tokens == chat["usage"]["prompt_tokens"]


def test_text_format_json_schema_constrains_the_output(client: openai.OpenAI) -> None:
    reply = client.responses.create(model="tiny:chat", input="hi", max_output_tokens=256, text=SCHEMA_FORMAT)
    assert reply.status == "completed" and list(json.loads(reply.output_text)) == ["ok"]
    assert reply.text.format.type == "json_schema"


def test_stateful_fields_and_unknown_items_are_refused_naming_them(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=CYCLE, input="hi", previous_response_id="resp_123")
    assert bad.value.body["param"] == "previous_response_id"
    assert "send the whole conversation in input" in bad.value.body["message"]
    cases = [({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
             ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
              "input[0].content[0].type"),
             ({"max_output_tokens": -5}, "max_output_tokens"),
             ({"temperature": "hot"}, "temperature")]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.responses.create(**{"model": CYCLE, "input": "hi", **fields})
        assert bad.value.body["param"] == param and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    assert client.responses.create(model=CYCLE, input="hi", max_output_tokens=2, store=True).status == "incomplete"
    # Hosted tools (Codex sends some with every request) are left out, not refused.
    hosted = client.responses.create(model=CYCLE, input="hi", max_output_tokens=2, tools=[{"type": "web_search"}])
    assert hosted.status == "incomplete"


def test_an_engine_dying_mid_stream_ends_it_with_response_failed(inst: Instance, client: openai.OpenAI) -> None:
    kinds = []
    for event in client.responses.create(model=CYCLE, input="hi", max_output_tokens=100000, stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta" and kinds.count(event.type) == 2:  # once: the events
            os.kill(inst.slot(CYCLE)["pid"], signal.SIGKILL)  # after it (the failure's) leave the count at 2
    assert kinds[-1] == "response.failed" and "response.output_item.done" in kinds
    assert event.response.status == "failed" and "failed mid-stream" in event.response.error.message


def test_keep_alive_reaches_the_lease(inst: Instance) -> None:
    body = {"model": CYCLE, "input": "hi", "max_output_tokens": 1, "keep_alive": "1h"}
    assert inst.post("/v1/responses", body)[0] == 200
    assert inst.slot(CYCLE)["expires_in_s"] > 3000  # the instance's default is minutes


@pytest.mark.parametrize(("extra", "param"), [
    ({"input": "hi", "text": "x"}, "text"),
    ({"input": [{"role": {"a": 1}, "content": "hi"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": ["input_text"], "text": "hi"}]}]}, "input[0].content[0]"),
])
def test_fields_of_the_wrong_type_are_400s_naming_them(inst: Instance, extra: dict, param: str) -> None:
    code, body = inst.post("/v1/responses", {"model": CYCLE, **extra})
    assert code == 400 and body["error"]["param"] == param
