"""What the gateway reads from a request body before forwarding it."""

from __future__ import annotations

import json

import pytest

from gateway.api.openai.schemas import parse_inference
from gateway.errors import STATUS, OpenAIError
from gateway.upstream import _engine_error
from manager.protocol import ErrorCode


def test_bytes_without_lmforge_fields_are_forwarded_untouched() -> None:
    raw = b'{"model": "m", "stream": true, "messages": [], "temperature": 0.2}'
    fields, body = parse_inference(raw)
    assert (fields.model, fields.stream, fields.keep_alive) == ("m", True, None)
    assert body is raw


def test_keep_alive_is_taken_out_and_everything_else_kept() -> None:
    fields, body = parse_inference(b'{"model": "m", "keep_alive": "10m", "seed": 7, "messages": [1]}')
    assert fields.keep_alive == "10m"
    assert json.loads(body) == {"model": "m", "seed": 7, "messages": [1]}


@pytest.mark.parametrize(
    ("raw", "param"), [(b'{"model": 3}', "model"), (b'{"model": "m", "stream": "yes"}', "stream")]
)
def test_wrong_types_name_the_field(raw: bytes, param: str) -> None:
    with pytest.raises(OpenAIError) as err:
        parse_inference(raw)
    assert err.value.status == 400 and err.value.param == param


def test_every_manager_error_code_has_an_http_status() -> None:
    assert set(STATUS) == set(ErrorCode)
    assert STATUS[ErrorCode.MODEL_NOT_FOUND] == 404 and STATUS[ErrorCode.NO_CAPACITY] == 503


def test_engine_errors_are_reshaped_into_openai_error_objects() -> None:
    llama = json.dumps({"error": {"code": 400, "message": "bad n_probs", "type": "invalid_request_error"}})
    body = json.loads(_engine_error(400, llama.encode(), "t").body)
    assert body == {"error": {"message": "bad n_probs", "type": "invalid_request_error", "param": None, "code": "400"}}
    text = json.loads(_engine_error(500, b"Internal Server Error", "t").body)
    assert text["error"]["message"] == "Internal Server Error" and text["error"]["type"] == "server_error"
