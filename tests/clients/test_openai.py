"""The official `openai` client, sync and async: chat, completions, embeddings, models, responses."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest

from tests.clients.served import CHAT, CYCLE, CYCLE_TEXT, EMBED, EMBED_DIMS, GEMMA, MESSAGES, RERANK


@pytest.fixture(scope="module")
def client(v1: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=v1, api_key="lmforge", max_retries=0)


@pytest.fixture
def aclient(v1: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=v1, api_key="lmforge", max_retries=0)


def test_chat_stops_at_max_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=CYCLE, messages=MESSAGES, max_tokens=4)
    assert reply.object == "chat.completion" and reply.model == CYCLE
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == CYCLE_TEXT * 2
    assert choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 4 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4


def test_chat_streams_chunks_and_a_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=CYCLE, messages=MESSAGES, max_completion_tokens=6, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == CYCLE_TEXT * 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert {c.id for c in chunks} == {chunks[0].id}


def test_completions(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=CYCLE, prompt="once upon", max_tokens=4)
    assert reply.choices[0].text == CYCLE_TEXT * 2 and reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4


def test_embeddings_of_a_list_as_floats_and_base64(client: openai.OpenAI) -> None:
    texts = ["first text", "second text", "third"]
    # Without encoding_format the client itself asks for base64 and decodes it to floats.
    floats = client.embeddings.create(model=EMBED, input=texts)
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert all(len(d.embedding) == EMBED_DIMS for d in floats.data)
    assert floats.usage.prompt_tokens > 0 and floats.usage.total_tokens == floats.usage.prompt_tokens
    raw = client.embeddings.create(model=EMBED, input=texts, encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(d.embedding), dtype=np.float32) for d in raw.data]
    assert np.allclose(decoded, [d.embedding for d in floats.data], atol=1e-5)


def test_models_list_every_installed_model(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {CHAT, CYCLE, EMBED, RERANK, GEMMA} <= ids
    assert client.models.retrieve(GEMMA).id == GEMMA


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such:model", messages=MESSAGES, max_tokens=1)
    assert err.value.code == "model_not_found"


def test_responses_with_text_input_and_instructions(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=CYCLE, input="hello", instructions="be brief", max_output_tokens=16)
    assert reply.object == "response" and reply.model == CYCLE
    assert reply.output_text == CYCLE_TEXT * 8
    message = reply.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    # Cut by max_output_tokens: OpenAI reports that as incomplete, not completed.
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.output_tokens == 16 and reply.usage.input_tokens > 0


def test_responses_takes_input_items(client: openai.OpenAI) -> None:
    items = [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}]
    reply = client.responses.create(model=CYCLE, input=items, max_output_tokens=16)
    assert reply.output_text == CYCLE_TEXT * 8


def test_responses_stream_typed_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=CYCLE, input="hello", max_output_tokens=16, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):
        assert kinds.count(kind) == 1, kinds
    deltas = [e for e in events if isinstance(e, openai.types.responses.ResponseTextDeltaEvent)]
    assert "".join(d.delta for d in deltas) == CYCLE_TEXT * 8
    assert [e.sequence_number for e in events] == sorted({e.sequence_number for e in events})
    final = events[-1].response
    assert final.output_text == CYCLE_TEXT * 8 and final.usage.output_tokens == 16


def test_responses_refuses_previous_response_id(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=CYCLE, input="hello", previous_response_id="resp_123")
    assert "previous_response_id" in str(err.value)


async def test_async_chat_stream_and_non_stream(aclient: openai.AsyncOpenAI) -> None:
    reply = await aclient.chat.completions.create(model=CYCLE, messages=MESSAGES, max_tokens=2)
    assert reply.choices[0].message.content == CYCLE_TEXT and reply.usage.completion_tokens == 2
    stream = await aclient.chat.completions.create(model=CYCLE, messages=MESSAGES, max_tokens=4, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == CYCLE_TEXT * 2


async def test_async_completions_embeddings_and_models(aclient: openai.AsyncOpenAI) -> None:
    reply = await aclient.completions.create(model=CYCLE, prompt="once", max_tokens=2)
    assert reply.choices[0].text == CYCLE_TEXT
    vectors = await aclient.embeddings.create(model=EMBED, input=["a", "b"], encoding_format="float")
    assert [len(d.embedding) for d in vectors.data] == [EMBED_DIMS, EMBED_DIMS]
    assert GEMMA in {m.id async for m in aclient.models.list()}


async def test_async_responses(aclient: openai.AsyncOpenAI) -> None:
    reply = await aclient.responses.create(model=CYCLE, input="hello", max_output_tokens=16)
    assert reply.output_text == CYCLE_TEXT * 8
    stream = await aclient.responses.create(model=CYCLE, input="hello", max_output_tokens=16, stream=True)
    kinds = [e.type async for e in stream]
    assert kinds[0] == "response.created" and "response.output_text.delta" in kinds
