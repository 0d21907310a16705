"""The one request-body decoder: JSON objects only, nested at most MAX_DEPTH deep, never a RecursionError."""

from __future__ import annotations

import pytest

from gateway.api.native.schemas import SwitchBody, parse_body
from gateway.dataplane.validate import ANTHROPIC, MAX_DEPTH, OLLAMA, OPENAI, check, decode_object, nests_deeper
from gateway.errors import ApiError


def nested(depth: int, inner: bytes = b"") -> bytes:
    """An object whose "x" holds arrays, `depth` levels in all counting the object."""
    return b'{"x": ' + b"[" * (depth - 1) + inner + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 999, 10_000, 1_000_000])
def test_a_body_nested_past_the_cap_is_a_400_however_deep(depth: int) -> None:
    with pytest.raises(ApiError) as caught:
        decode_object(nested(depth))
    assert caught.value.status == 400 and f"more than {MAX_DEPTH} deep" in caught.value.message


def test_a_body_at_the_cap_decodes() -> None:
    assert nests_deeper(decode_object(nested(MAX_DEPTH)), MAX_DEPTH - 1)


def test_brackets_inside_strings_do_not_count() -> None:
    body = decode_object(b'{"prompt": "' + b"[{" * 10_000 + b'"}')
    assert body["prompt"].startswith("[{")


def test_depth_counts_objects_and_arrays_alike() -> None:
    assert not nests_deeper({"a": [{"b": [1]}]}, 4)
    assert nests_deeper({"a": [{"b": [1]}]}, 3)
    assert not nests_deeper("scalar", 0)


def test_typed_bodies_go_through_the_same_decoder() -> None:
    with pytest.raises(ApiError) as caught:
        parse_body(b'{"model": "m", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", SwitchBody)
    assert caught.value.status == 400 and "deep" in caught.value.message
    assert parse_body(b'{"model": "gemma3:270m"}', SwitchBody).model == "gemma3:270m"


@pytest.mark.parametrize("rules", [OPENAI, ANTHROPIC, OLLAMA], ids=["openai", "anthropic", "ollama"])
def test_a_keep_alive_that_is_not_a_duration_is_a_400_in_every_dialect(rules: dict) -> None:
    for good in ("5m", "1h30m", "0", 0, -1, 300.5):
        check({"keep_alive": good}, rules)
    for bad in ("soon", "5 minutes", "", True, float("nan")):
        with pytest.raises(ApiError) as refused:
            check({"keep_alive": bad}, rules)
        assert refused.value.status == 400 and refused.value.param == "keep_alive"
