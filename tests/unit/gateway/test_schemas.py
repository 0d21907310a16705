"""What the gateway checks and changes in a request body before any engine work."""

from __future__ import annotations

import json

import pytest

from gateway.api.openai.schemas import relay_body
from gateway.dataplane.engine import engine_error
from gateway.dataplane.gates import has_image
from gateway.dataplane.model import Message
from gateway.dataplane.validate import OLLAMA_OPTIONS, check
from gateway.errors import STATUS, ApiError, Dialect
from manager.protocol import ErrorCode

CHAT = b'"messages": [{"role": "user", "content": "hi"}]'


def test_bytes_without_lmforge_fields_are_forwarded_untouched() -> None:
    raw = b'{"model": "m", "stream": true, ' + CHAT + b', "temperature": 0.2}'
    relay = relay_body(raw, chat=True)
    assert (relay.model, relay.stream, relay.keep_alive) == ("m", True, None)
    assert relay.raw is raw


def test_keep_alive_is_taken_out_and_everything_else_kept() -> None:
    relay = relay_body(b'{"model": "m", "keep_alive": "10m", "seed": 7, ' + CHAT + b'}', chat=True)
    assert relay.keep_alive == "10m"
    assert json.loads(relay.raw) == {"model": "m", "seed": 7, "messages": [{"role": "user", "content": "hi"}]}


def test_the_developer_role_reaches_the_engine_as_system() -> None:
    relay = relay_body(b'{"model": "m", "messages": [{"role": "developer", "content": "be brief"}]}', chat=True)
    assert json.loads(relay.raw)["messages"] == [{"role": "system", "content": "be brief"}]


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": 3, ' + CHAT + b'}', "model"),
    (b'{"model": "m", "stream": "yes", ' + CHAT + b'}', "stream"),
    (b'{"model": "m", "max_tokens": -5, ' + CHAT + b'}', "max_tokens"),
    (b'{"model": "m", "max_tokens": true, ' + CHAT + b'}', "max_tokens"),
    (b'{"model": "m", "temperature": "hot", ' + CHAT + b'}', "temperature"),
    (b'{"model": "m", "n": 100000, ' + CHAT + b'}', "n"),
    (b'{"model": "m", "messages": "x"}', "messages"),
    (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
    (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    (b'{"model": "m"}', "messages"),
])
def test_bad_values_are_refused_naming_the_field(raw: bytes, param: str) -> None:
    with pytest.raises(ApiError) as err:
        relay_body(raw, chat=True)
    assert err.value.status == 400 and err.value.param == param
    assert param in err.value.message


def test_ollama_options_are_checked_under_their_own_prefix() -> None:
    with pytest.raises(ApiError) as err:
        check({"num_predict": "many"}, OLLAMA_OPTIONS, "options.")
    assert err.value.param == "options.num_predict" and "integer" in err.value.message
    check({"num_predict": -1, "temperature": 0.7, "stop": ["\n"]}, OLLAMA_OPTIONS, "options.")


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]"])
def test_a_body_that_is_not_a_json_object_is_a_400(raw: bytes) -> None:
    with pytest.raises(ApiError) as err:
        relay_body(raw, chat=True)
    assert err.value.status == 400 and err.value.code == "invalid_json"


def test_one_error_renders_in_each_dialect() -> None:
    err = ApiError(404, "model 'x' is not installed", code="model_not_found", param="model")
    assert err.body(Dialect.OLLAMA) == {"error": "model 'x' is not installed"}
    assert err.body(Dialect.ANTHROPIC) == {"type": "error", "error": {"type": "not_found_error",
                                                                    "message": "model 'x' is not installed"}}
    assert err.body()["error"]["code"] == "model_not_found"


def test_every_manager_error_code_has_an_http_status() -> None:
    assert set(STATUS) == set(ErrorCode)
    assert STATUS[ErrorCode.MODEL_NOT_FOUND] == 404 and STATUS[ErrorCode.NO_CAPACITY] == 503


def test_engine_errors_are_reshaped_into_openai_error_objects() -> None:
    llama = json.dumps({"error": {"code": 400, "message": "bad n_probs", "type": "invalid_request_error"}})
    body = engine_error(400, llama.encode()).body()
    assert body == {"error": {"message": "bad n_probs", "type": "invalid_request_error", "param": None, "code": "400"}}
    text = engine_error(500, b"Internal Server Error").body()
    assert text["error"]["message"] == "Internal Server Error" and text["error"]["type"] == "server_error"


@pytest.mark.parametrize(("extra", "param"), [
    (b'"tools": [{"type": "x", "function": {"name": "f"}}]', "tools[0].type"),
    (b'"tools": [{"type": "function", "function": {"name": 5}}]', "tools[0].function.name"),
    (b'"keep_alive": [1]', "keep_alive"),
])
def test_fields_the_engine_would_answer_with_a_500_are_400s_here(extra: bytes, param: str) -> None:
    with pytest.raises(ApiError) as err:
        relay_body(b'{"model": "m", ' + CHAT + b', ' + extra + b'}', chat=True)
    assert err.value.status == 400 and err.value.param == param


def test_a_message_name_of_the_wrong_type_is_a_400() -> None:
    with pytest.raises(ApiError) as err:
        relay_body(b'{"model": "m", "messages": [{"role": "user", "content": "hi", "name": 5}]}', chat=True)
    assert err.value.param == "messages[0].name"


def test_llama_servers_parse_failures_are_the_callers_400() -> None:
    body = json.dumps({"error": {"code": 500, "message": "Failed to parse tools: Unsupported tool type"}})
    assert engine_error(500, body.encode()).status == 400


@pytest.mark.parametrize(("messages", "param"), [
    (b'[{"role": "user", "content": [{"type": ["image_url"]}]}]', "messages[0].content[0]"),
    (b'[{"role": "user", "content": [{"type": {"a": 1}}]}]', "messages[0].content[0]"),
    (b'[{"role": "user", "content": ["hi"]}]', "messages[0].content[0]"),
    (b'[{"role": {"a": 1}, "content": "hi"}]', "messages[0].role"),
])
def test_content_parts_and_roles_of_the_wrong_type_are_400s(messages: bytes, param: str) -> None:
    with pytest.raises(ApiError) as err:
        relay_body(b'{"model": "m", "messages": ' + messages + b'}', chat=True)
    assert err.value.status == 400 and err.value.param == param


def test_a_part_type_that_is_not_a_string_is_no_image() -> None:
    assert not has_image({"role": "user", "content": [{"type": ["image_url"]}]})
    assert has_image(Message(role="user", content=[{"type": "image_url", "image_url": {"url": "x"}}]))


def test_completions_take_logprobs_as_a_count_and_chat_as_a_flag() -> None:
    relay = relay_body(b'{"model": "m", "prompt": "x", "logprobs": 3}', chat=False)
    assert relay.body["logprobs"] == 3
    for raw, chat in ((b'{"model": "m", "prompt": "x", "logprobs": 6}', False),
                      (b'{"model": "m", "logprobs": 3, ' + CHAT + b'}', True)):
        with pytest.raises(ApiError) as err:
            relay_body(raw, chat=chat)
        assert err.value.status == 400 and err.value.param == "logprobs"
