"""Ollama request bodies into the internal requests: options, messages, images, tools, format, think."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.ollama import codec
from gateway.dataplane.model import ChatRequest, Sampling, TextRequest, engine_body
from gateway.errors import ApiError
from manager.protocol import ModelEntry

ENTRY = ModelEntry(name="tiny:chat", path="/models/tiny.gguf", chat_template=True)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def chat(**fields) -> ChatRequest:  # type: ignore[no-untyped-def]
    body = {"model": "tiny:chat", "messages": [{"role": "user", "content": "hi"}], **fields}
    codec.validate(body)
    return codec.chat_request(ENTRY, body)


def test_options_map_to_sampling_context_and_engine_fields() -> None:
    req = chat(options={"num_predict": 5, "temperature": 0.2, "top_k": 7, "top_p": 0.9, "min_p": 0.1,
                        "typical_p": 0.8, "repeat_penalty": 1.1, "repeat_last_n": 32, "presence_penalty": 0.5,
                        "frequency_penalty": 0.25, "seed": 42, "stop": "END", "num_ctx": 12288, "mirostat": 2})
    assert req.sampling == Sampling(max_tokens=5, temperature=0.2, top_k=7, top_p=0.9, min_p=0.1, typical_p=0.8,
                                    repeat_penalty=1.1, repeat_last_n=32, presence_penalty=0.5,
                                    frequency_penalty=0.25, seed=42, stop=["END"])
    assert req.num_ctx == 12288 and req.extra == {"mirostat": 2}


@pytest.mark.parametrize("num_predict", [-1, -2, 0])
def test_num_predict_without_a_positive_limit_sets_none(num_predict: int) -> None:
    assert chat(options={"num_predict": num_predict}).sampling.max_tokens is None


def test_options_the_engine_cannot_take_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lmforge.gateway"):
        req = chat(options={"num_thread": 4, "num_gpu": 1, "use_mmap": False, "low_vram": True})
    assert req.sampling == Sampling() and req.extra == {}
    for name in ("num_thread", "num_gpu", "use_mmap", "low_vram"):
        assert sum(f"option {name}=" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [({"options": {"num_predict": "many"}}, "options.num_predict must be an integer (got 'many')"),
     ({"options": {"temperature": "hot"}}, "options.temperature must be a number (got 'hot')"),
     ({"options": "x"}, "options must be an object (got 'x')"),
     ({"stream": "yes"}, "stream must be true or false (got 'yes')"),
     ({"messages": "x"}, "messages must be an array (got 'x')"),
     ({"format": "xml"}, 'format must be "json" or a JSON schema object'),
     ({"think": "max"}, "think must be true, false or one of low, medium, high (got 'max')"),
     ({"keep_alive": "soon"}, "keep_alive must be a duration such as \"30s\"")],
)
def test_bad_fields_are_400_naming_the_field(body: dict, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        codec.validate({"model": "m", **body})
    assert caught.value.status == 400 and message in caught.value.message


def test_images_become_data_url_parts_after_the_text() -> None:
    req = chat(messages=[{"role": "user", "content": "what is this?", "images": [PNG]}])
    assert req.messages[0].content == [{"type": "text", "text": "what is this?"},
                                       {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]


def test_an_image_that_is_not_base64_is_400_naming_it() -> None:
    with pytest.raises(ApiError) as caught:
        chat(messages=[{"role": "user", "content": "x", "images": ["not base64!"]}])
    assert caught.value.param == "messages[0].images[0]"


def test_tool_calls_in_history_carry_json_text_and_tool_results_find_their_call() -> None:
    req = chat(messages=[
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "thinking": "two cities", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "time", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "tool_name": "time", "content": "noon"},
        {"role": "tool", "tool_name": "weather", "content": "sunny"},
    ], tools=[{"type": "function", "function": {"name": "weather", "description": "forecast",
                                                  "parameters": {"type": "object"}}}])
    assistant = req.messages[1]
    assert [(c.id, c.name, json.loads(c.arguments)) for c in assistant.tool_calls] == [
        ("call_1_0", "weather", {"city": "Paris"}), ("call_1_1", "time", {"city": "Rome"})]
    assert assistant.reasoning == "two cities"
    assert [m.tool_call_id for m in req.messages[2:]] == ["call_1_1", "call_1_0"]
    assert [(t.name, t.description) for t in req.tools] == [("weather", "forecast")]
    sent = engine_body(req)["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'


def test_a_tool_without_a_name_is_400() -> None:
    with pytest.raises(ApiError) as caught:
        chat(tools=[{"type": "function", "function": {"description": "x"}}])
    assert caught.value.param == "tools[0].function.name"


@pytest.mark.parametrize(
    ("given", "expected"),
    [("json", {"type": "json_object"}),
     ({"type": "object"}, {"type": "json_schema", "json_schema": {"name": "format", "schema": {"type": "object"}}}),
     ("", None)],
)
def test_format_becomes_response_format(given: object, expected: object) -> None:
    assert chat(format=given).response_format == expected


def test_think_switches_the_template_and_a_level_sets_the_effort() -> None:
    assert chat(think=False).extra == {"chat_template_kwargs": {"enable_thinking": False}}
    assert chat(think="high").extra == {"chat_template_kwargs": {"enable_thinking": True,
                                                                 "reasoning_effort": "high"}}
    assert chat().extra == {}


def test_generate_with_a_template_is_a_chat_of_system_and_prompt() -> None:
    body = {"model": "m", "system": "be brief", "prompt": "hi", "images": [PNG]}
    req = codec.generate_chat_request(ENTRY, body)
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.messages[1].content[0] == {"type": "text", "text": "hi"}  # type: ignore[index]


def test_generate_as_text_prepends_the_system_unless_raw() -> None:
    assert codec.text_request(ENTRY, {"system": "S", "prompt": "P"}).prompt == "S\n\nP"
    assert codec.text_request(ENTRY, {"system": "S", "prompt": "P", "raw": True}).prompt == "P"
    assert codec.text_request(ENTRY, {"prompt": "P", "suffix": "Q"}).suffix == "Q"


def test_a_text_request_sends_its_format_as_the_schema_the_engine_reads() -> None:
    req = codec.text_request(ENTRY, {"prompt": "P", "format": {"const": 42}})
    assert engine_body(req)["json_schema"] == {"const": 42}
    assert engine_body(TextRequest(model="m", prompt="P", response_format={"type": "json_object"}))["json_schema"] \
        == {"type": "object"}


@pytest.mark.parametrize(("raw", "fragment"), [(b"", "the request body is empty"), (b"{nope", "not valid JSON"),
                                               (b"[1]", "must be a JSON object")])
async def test_unreadable_bodies_are_400(raw: bytes, fragment: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        try:
            await codec.read_request(request)
        except ApiError as exc:
            return web.json_response({"message": exc.message}, status=exc.status)
        return web.json_response({"message": "read"})

    app = web.Application()
    app.router.add_post("/api/chat", handler)
    async with TestClient(TestServer(app)) as client:
        reply = await client.post("/api/chat", data=raw)
        assert reply.status == 400 and fragment in (await reply.json())["message"]


def test_model_is_required_and_show_takes_the_legacy_name() -> None:
    with pytest.raises(ApiError):
        codec.model_name({"name": "x"})
    assert codec.model_name({"name": "x"}, legacy=True) == "x"
